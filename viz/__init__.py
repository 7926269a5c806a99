"""Pure functions from backend results to figures (HoloViews, HTML, files). No model code here."""
