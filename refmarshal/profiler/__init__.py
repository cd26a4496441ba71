"""``refmarshal profile``: where a program's start-up time goes, module by module.

collect.py runs inside the profiled interpreter; importtime.py reads ``-X importtime`` logs;
model.py holds a run's import tree; report.py and svg.py show it; cli.py is the command.
"""
