"""buildd's benchmark harness: buildd side by side with uv, pypa/build and pip.

Run it as ``python benchmarks/run.py`` from the repository root; the modules:

=================  ==========================================================
``settings``       paths, the index, the tools' isolated environment, logging
``projects``       the pinned sdists of projects.toml: download, unpack, read
``workspace``      the private /tmp folder: work trees, outputs, logs
``daemon``         a buildd-server started and stopped by the harness
``tools``          the wheel builders compared, one timed process per run
``context``        what the figures share: options, projects, daemon, hook cost
``stats``          medians, percentiles, geometric means, formatting
``figure``         one row of the summary table
``builds``         the wheel-build matrix: P1, P1b, P3
``metadata``       warm metadata through the client library: P2
``load``           concurrent clients: P4
``memory``         daemon memory: P5
``machine``        the machine, its load, and the tools' versions
``report``         the Markdown report
``cli``            the command line
=================  ==========================================================
"""
