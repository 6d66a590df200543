"""Scaling-law sweeps for MDM and AR: ladder, FLOP accounting, planner, runner, collector, fits, plots, report."""
