"""Analytics: the event log as a DuckDB star schema, KPI views, and safe SQL for analysts.

``store``   the projection (batches into DuckDB, exactly once, leadership, rebuild)
``schema``  the tables, how each is derived, and the KPI views
``sandbox`` analysts' SQL: read-only, no file access, limits; results as JSON/CSV/Arrow
``clv``     customer lifetime value (BG/NBD with Gamma-Gamma) fitted on the purchases
``report``  the HTML report with its charts
"""
