"""Figure scripts: each ``paper_figures/fig_*.py`` has ``plot(data_path, out_stem)`` that reads the data an
``experiments/fig_*.py`` wrote and draws it (PNG + PDF via ``rlkl.plotting.save``). They compute no science:
every plotted number is read from the data file. ``rlkl figures`` runs them all.
"""
