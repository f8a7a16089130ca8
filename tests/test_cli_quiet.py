"""The library's step reports: one plain line each on stderr; -q keeps warnings only."""
from __future__ import annotations

import logging

from towerrec.pipelines.cli import build_parser, log_pipeline_steps

import pytest


@pytest.mark.parametrize("argv,quiet", [(["evaluate"], False), (["-q", "evaluate"], True),
                                        (["evaluate", "-q"], True)])
def test_quiet_keeps_warnings_and_drops_step_reports(argv, quiet, capsys):
    args = build_parser().parse_args(argv)
    assert args.quiet is quiet
    logger = logging.getLogger("towerrec.steps")
    try:
        log_pipeline_steps(args.quiet)
        logger.info("gate: a step report")
        logger.warning("a warning")
        err = capsys.readouterr().err
    finally:
        log_pipeline_steps(False)
    assert ("gate: a step report\n" in err) is not quiet
    assert "a warning\n" in err
