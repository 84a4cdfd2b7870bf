"""The analytics star schema in DuckDB: tables, how each is derived from the log, KPI views.

Every table is a pure function of the event log (and of the configured stages and SLA
targets), so a rebuild from position 0 gives the same content. All times are UTC
``TIMESTAMP``s; money is ``DECIMAL(18,4)`` beside its currency and is never summed
across currencies. Customers appear only as ``customer_key``, a keyed HMAC of the
customer id: no names, e-mail addresses or other personal fields enter DuckDB.

Tables come in two kinds:

``append``
    rows of the new events only (``new_events``: the batch's slice of ``fact_events``);
``keyed``
    rows recomputed for every key the batch touched (``touched``): they fold an
    entity's whole history (an opportunity's stages, a customer's attribute history).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

# Money and the JSON payload's timestamps.
MONEY = "DECIMAL(18,4)"


def _ts(expr: str) -> str:
    """An ISO 8601 text (any offset) as a UTC TIMESTAMP (UTC texts, the rule, parse fast)."""
    return (f"CASE WHEN suffix({expr}, '+00:00') THEN CAST(left({expr}, -6) AS TIMESTAMP)"
            f" ELSE CAST(timezone('UTC', CAST({expr} AS TIMESTAMPTZ)) AS TIMESTAMP) END")


def _p(field: str) -> str:
    return f"(payload->>'{field}')"


def _in(*types: str) -> str:
    return "event_type IN (" + ", ".join(f"'{t}'" for t in types) + ")"


@dataclass(frozen=True)
class DerivedTable:
    """A table of the star: its DDL, documentation and how a batch refreshes it."""

    name: str
    columns: str  # column definitions
    comment: str
    select: str  # over ``new_events`` (append) or ``fact_events`` restricted to ``touched``
    kind: str = "append"  # append | keyed
    key: str = ""  # keyed: the column whose touched values are recomputed
    #: keyed: SQL giving the touched keys from ``new_events`` (one column ``k``)
    touched: str = ""


TRACKING_DDL = """
CREATE TABLE IF NOT EXISTS analytics_tracking (
    name VARCHAR NOT NULL, position BIGINT NOT NULL, updated_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS dim_stage (
    pipeline VARCHAR NOT NULL, stage VARCHAR NOT NULL, stage_order INTEGER NOT NULL,
    probability INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sla_target (
    priority VARCHAR NOT NULL, first_response_hours DOUBLE NOT NULL,
    resolution_hours DOUBLE NOT NULL);
"""

FACT_EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS fact_events (
    position BIGINT NOT NULL, event_id UUID NOT NULL, event_type VARCHAR NOT NULL,
    event_version INTEGER NOT NULL, aggregate_type VARCHAR NOT NULL, aggregate_id UUID NOT NULL,
    aggregate_version BIGINT NOT NULL, customer_key VARCHAR, occurred_at TIMESTAMP NOT NULL,
    recorded_at TIMESTAMP NOT NULL, actor_id VARCHAR NOT NULL, actor_role VARCHAR NOT NULL,
    reason VARCHAR, correlation_id VARCHAR, causation_id VARCHAR, command_id UUID,
    payload JSON NOT NULL)
"""

OPP_EVENTS = ("OpportunityOpened", "OpportunityStageChanged", "OpportunityAmountChanged",
              "OpportunityCloseDateChanged", "OpportunityOwnerChanged", "OpportunityWon",
              "OpportunityLost", "OpportunityReopened")
STAGE_EVENTS = ("OpportunityOpened", "OpportunityStageChanged", "OpportunityWon",
                "OpportunityLost", "OpportunityReopened")
CUSTOMER_ATTR_EVENTS = ("CustomerRegistered", "CustomerDetailsChanged",
                        "CustomerOwnerReassigned", "CustomerLifecycleStageChanged",
                        "CustomerClassified")

_TOUCHED_OPPS = "SELECT DISTINCT aggregate_id AS k FROM new_events WHERE aggregate_type = 'opportunity'"
_TOUCHED_REQUESTS = (
    "SELECT DISTINCT aggregate_id AS k FROM new_events WHERE aggregate_type = 'service_request'"
    " UNION SELECT DISTINCT CAST(payload->>'service_request_id' AS UUID) FROM new_events"
    " WHERE event_type = 'InteractionLogged' AND payload->>'service_request_id' IS NOT NULL"
)


def _days_and_bought(source: str) -> str:
    """The purchase days (a day's orders summed) and, per customer and currency, orders,
    purchase days, money, first and last purchase and the mean repeat-day value, of the
    purchases in ``source``: two CTEs shared by the customer value table and its macro."""
    return f"""days AS (
          SELECT customer_key, currency, CAST(purchased_at AS DATE) AS day,
                 sum(amount) AS amount, count(*) AS orders, min(purchased_at) AS first_at,
                 max(purchased_at) AS last_at
          FROM {source} GROUP BY ALL),
        bought AS (
          SELECT customer_key, currency, CAST(sum(orders) AS INTEGER) AS orders,
                 CAST(count(*) AS INTEGER) AS purchase_days, sum(amount) AS monetary,
                 min(first_at) AS first_at, max(last_at) AS last_at,
                 CASE WHEN count(*) > 1 THEN CAST((sum(amount) - arg_min(amount, day))
                                                  / (count(*) - 1) AS DOUBLE) END AS repeat_mean
          FROM days GROUP BY ALL)"""


TABLES: tuple[DerivedTable, ...] = (
    DerivedTable(
        "stage_transitions",
        "opportunity_id UUID, customer_key VARCHAR, pipeline VARCHAR, position BIGINT,"
        " event_type VARCHAR, from_stage VARCHAR, stage VARCHAR, probability INTEGER,"
        " actor_id VARCHAR, entered_at TIMESTAMP, left_at TIMESTAMP, days_in_stage DOUBLE",
        "One row per stage an opportunity entered (opened, moved, won, lost, reopened), with"
        " when it left that stage and the days it spent there (NULL while it is still there).",
        f"""
        SELECT aggregate_id, customer_key,
               first_value({_p('pipeline')}) OVER w,
               position, event_type,
               CASE WHEN event_type = 'OpportunityReopened' THEN {_p('previous_outcome')}
                    ELSE {_p('from_stage')} END,
               CASE event_type WHEN 'OpportunityWon' THEN 'won' WHEN 'OpportunityLost' THEN 'lost'
                    ELSE coalesce({_p('to_stage')}, {_p('stage')}) END,
               CASE event_type WHEN 'OpportunityWon' THEN 100 WHEN 'OpportunityLost' THEN 0
                    ELSE CAST({_p('probability')} AS INTEGER) END,
               actor_id, occurred_at, lead(occurred_at) OVER w,
               date_diff('second', occurred_at, lead(occurred_at) OVER w) / 86400.0
        FROM fact_events
        WHERE aggregate_id IN (SELECT k FROM touched) AND {_in(*STAGE_EVENTS)}
        WINDOW w AS (PARTITION BY aggregate_id ORDER BY position)
        """,
        kind="keyed", key="opportunity_id", touched=_TOUCHED_OPPS,
    ),
    DerivedTable(
        "opportunities",
        f"opportunity_id UUID, customer_key VARCHAR, pipeline VARCHAR, owner_id VARCHAR,"
        f" amount {MONEY}, currency VARCHAR, expected_close DATE, stage VARCHAR,"
        " probability INTEGER, status VARCHAR, loss_reason VARCHAR, opened_at TIMESTAMP,"
        " closed_at TIMESTAMP, cycle_days DOUBLE, furthest_stage_order INTEGER,"
        " stages_visited VARCHAR[]",
        "One row per opportunity, as it is now: status open | won | lost, the stage it is in"
        " (for a closed one, the stage it was closed from), and for a closed one its sales"
        " cycle in days (opened to closed, business time); the furthest stage it reached"
        " (dim_stage.stage_order; 1000 = won) and the stages it was ever in.",
        f"""
        SELECT id, ck, pl, ow, am, cur, CAST(nullif(ec, '') AS DATE), st, pr, status,
               CASE WHEN status = 'lost' THEN lr END, op,
               CASE WHEN status <> 'open' THEN cl END,
               CASE WHEN status <> 'open' THEN date_diff('second', op, cl) / 86400.0 END,
               v.furthest, v.visited
        FROM (SELECT t.opportunity_id,
                     max(CASE WHEN t.stage = 'won' THEN 1000 ELSE d.stage_order END) AS furthest,
                     list_sort(list_distinct(list(t.stage)
                       FILTER (WHERE t.stage NOT IN ('won', 'lost')))) AS visited
              FROM stage_transitions t LEFT JOIN dim_stage d USING (pipeline, stage)
              WHERE t.opportunity_id IN (SELECT k FROM touched) GROUP BY 1) v
        RIGHT JOIN (
        SELECT aggregate_id AS id, arg_max(customer_key, position) AS ck,
          arg_max({_p('pipeline')}, position) FILTER (WHERE event_type = 'OpportunityOpened') AS pl,
          arg_max({_p('owner_id')}, position)
            FILTER (WHERE {_in('OpportunityOpened', 'OpportunityOwnerChanged')}) AS ow,
          arg_max(CAST({_p('amount')} AS {MONEY}), position)
            FILTER (WHERE {_in('OpportunityOpened', 'OpportunityAmountChanged', 'OpportunityWon')}) AS am,
          arg_max({_p('currency')}, position)
            FILTER (WHERE {_in('OpportunityOpened', 'OpportunityAmountChanged', 'OpportunityWon')}) AS cur,
          arg_max(coalesce({_p('expected_close')}, ''), position)
            FILTER (WHERE {_in('OpportunityOpened', 'OpportunityCloseDateChanged')}) AS ec,
          arg_max(coalesce({_p('to_stage')}, {_p('stage')}), position)
            FILTER (WHERE {_in('OpportunityOpened', 'OpportunityStageChanged', 'OpportunityReopened')}) AS st,
          arg_max(CAST({_p('probability')} AS INTEGER), position)
            FILTER (WHERE {_in('OpportunityOpened', 'OpportunityStageChanged', 'OpportunityReopened')}) AS pr,
          arg_max(CASE event_type WHEN 'OpportunityWon' THEN 'won' WHEN 'OpportunityLost'
                  THEN 'lost' ELSE 'open' END, position)
            FILTER (WHERE {_in('OpportunityOpened', 'OpportunityWon', 'OpportunityLost',
                                'OpportunityReopened')}) AS status,
          arg_max({_p('loss_reason')}, position) FILTER (WHERE event_type = 'OpportunityLost') AS lr,
          min(occurred_at) FILTER (WHERE event_type = 'OpportunityOpened') AS op,
          arg_max(occurred_at, position)
            FILTER (WHERE {_in('OpportunityWon', 'OpportunityLost')}) AS cl
        FROM fact_events
        WHERE aggregate_id IN (SELECT k FROM touched) AND {_in(*OPP_EVENTS)}
        GROUP BY aggregate_id) o ON o.id = v.opportunity_id
        """,
        kind="keyed", key="opportunity_id", touched=_TOUCHED_OPPS,
    ),
    DerivedTable(
        "interactions",
        "interaction_id UUID, position BIGINT, customer_key VARCHAR, occurred_at TIMESTAMP,"
        " channel VARCHAR, direction VARCHAR, duration_minutes INTEGER, opportunity_id UUID,"
        " service_request_id UUID, actor_id VARCHAR",
        "One row per logged interaction (call, e-mail, meeting, note, SMS, chat).",
        f"""
        SELECT aggregate_id, position, customer_key, occurred_at, {_p('channel')},
               {_p('direction')}, CAST({_p('duration_minutes')} AS INTEGER),
               CAST({_p('opportunity_id')} AS UUID), CAST({_p('service_request_id')} AS UUID),
               actor_id
        FROM new_events WHERE event_type = 'InteractionLogged'
        """,
    ),
    DerivedTable(
        "service_requests",
        "service_request_id UUID, customer_key VARCHAR, channel VARCHAR, request_type VARCHAR,"
        " priority VARCHAR, assignee_id VARCHAR, status VARCHAR, opened_at TIMESTAMP,"
        " first_response_at TIMESTAMP, resolved_at TIMESTAMP, reopened INTEGER,"
        " rating INTEGER, first_response_hours DOUBLE, resolution_hours DOUBLE",
        "One row per service request as it is now. The first response is the earliest of: a"
        " comment visible to the customer, a move to in_progress or waiting_on_customer, an"
        " outbound interaction logged against the request, its resolution. Resolution time"
        " runs to the first resolution; SLA met or missed is in the view service_request_sla.",
        f"""
        WITH e AS (
          SELECT aggregate_id AS id, position, occurred_at, event_type, payload, customer_key
          FROM fact_events WHERE aggregate_id IN (SELECT k FROM touched)
            AND aggregate_type = 'service_request'
          UNION ALL
          SELECT CAST({_p('service_request_id')} AS UUID), position, occurred_at,
                 'InteractionLogged', payload, customer_key
          FROM fact_events WHERE event_type = 'InteractionLogged'
            AND {_p('direction')} = 'outbound'
            AND CAST({_p('service_request_id')} AS UUID) IN (SELECT k FROM touched)
        ), s AS (
        SELECT id, arg_max(customer_key, position) FILTER (WHERE event_type <> 'InteractionLogged') ck,
          arg_max({_p('channel')}, position) FILTER (WHERE event_type = 'ServiceRequestOpened') ch,
          arg_max({_p('request_type')}, position) FILTER (WHERE event_type = 'ServiceRequestOpened') rt,
          arg_max({_p('priority')}, position)
            FILTER (WHERE {_in('ServiceRequestOpened', 'ServiceRequestPriorityChanged')}) pr,
          arg_max({_p('assignee_id')}, position) FILTER (WHERE event_type = 'ServiceRequestAssigned') asg,
          arg_max(CASE event_type WHEN 'ServiceRequestOpened' THEN 'open'
                  WHEN 'ServiceRequestResolved' THEN 'resolved' ELSE {_p('to_status')} END, position)
            FILTER (WHERE {_in('ServiceRequestOpened', 'ServiceRequestStatusChanged',
                                'ServiceRequestResolved')}) st,
          min(occurred_at) FILTER (WHERE event_type = 'ServiceRequestOpened') op,
          min(occurred_at) FILTER (WHERE
            (event_type = 'ServiceRequestCommented' AND {_p('visibility')} = 'customer')
            OR (event_type = 'ServiceRequestStatusChanged'
                AND {_p('to_status')} IN ('in_progress', 'waiting_on_customer'))
            OR event_type IN ('ServiceRequestResolved', 'InteractionLogged')) fr,
          min(occurred_at) FILTER (WHERE event_type = 'ServiceRequestResolved') rs,
          count(*) FILTER (WHERE event_type = 'ServiceRequestStatusChanged'
                           AND {_p('to_status')} = 'reopened') ro,
          arg_max(CAST({_p('rating')} AS INTEGER), position)
            FILTER (WHERE event_type = 'ServiceRequestSatisfactionRated') rating
        FROM e GROUP BY id)
        SELECT id, ck, ch, rt, pr, asg, st, op, fr, rs, ro, rating,
               date_diff('second', op, fr) / 3600.0, date_diff('second', op, rs) / 3600.0
        FROM s WHERE op IS NOT NULL
        """,
        kind="keyed", key="service_request_id", touched=_TOUCHED_REQUESTS,
    ),
    DerivedTable(
        "satisfaction_ratings",
        "service_request_id UUID, position BIGINT, customer_key VARCHAR, rated_at TIMESTAMP,"
        " rating INTEGER, channel VARCHAR, request_type VARCHAR, agent_id VARCHAR",
        "One row per satisfaction rating, with the request's channel and type and the agent"
        " it was assigned to when it was rated.",
        f"""
        SELECT id, position, customer_key, occurred_at, rating, ch, rt, agent FROM (
          SELECT aggregate_id AS id, position, customer_key, occurred_at, event_type,
                 CAST({_p('rating')} AS INTEGER) AS rating,
                 first_value({_p('channel')}) OVER w AS ch,
                 first_value({_p('request_type')}) OVER w AS rt,
                 last_value(CASE WHEN event_type = 'ServiceRequestAssigned'
                                 THEN {_p('assignee_id')} END IGNORE NULLS) OVER w AS agent
          FROM fact_events WHERE aggregate_id IN (SELECT k FROM touched)
            AND aggregate_type = 'service_request'
          WINDOW w AS (PARTITION BY aggregate_id ORDER BY position
                       ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))
        WHERE event_type = 'ServiceRequestSatisfactionRated'
        """,
        kind="keyed", key="service_request_id", touched=_TOUCHED_REQUESTS,
    ),
    DerivedTable(
        "purchases",
        f"order_id VARCHAR, position BIGINT, customer_key VARCHAR, purchased_at TIMESTAMP,"
        f" amount {MONEY}, currency VARCHAR, line_count INTEGER, actor_id VARCHAR",
        "One row per recorded purchase (order).",
        f"""
        SELECT {_p('order_id')}, position, customer_key, {_ts(_p('purchased_at'))},
               CAST({_p('amount')} AS {MONEY}), {_p('currency')},
               CAST(json_array_length(payload->'lines') AS INTEGER), actor_id
        FROM new_events WHERE event_type = 'CustomerPurchaseRecorded'
        """,
    ),
    DerivedTable(
        "purchase_lines",
        f"order_id VARCHAR, position BIGINT, line_no INTEGER, customer_key VARCHAR,"
        f" purchased_at TIMESTAMP, sku VARCHAR, description VARCHAR, quantity {MONEY},"
        f" unit_price {MONEY}, line_amount {MONEY}, currency VARCHAR",
        "One row per line of a purchase: what, how many, at what unit price.",
        f"""
        SELECT order_id, position, CAST(line_no AS INTEGER), customer_key, purchased_at,
               line->>'sku', line->>'description', CAST(line->>'quantity' AS {MONEY}),
               CAST(line->>'unit_price' AS {MONEY}),
               CAST(CAST(line->>'quantity' AS {MONEY}) * CAST(line->>'unit_price' AS {MONEY})
                    AS {MONEY}), currency
        FROM (
          SELECT {_p('order_id')} AS order_id, position, customer_key,
                 {_ts(_p('purchased_at'))} AS purchased_at, {_p('currency')} AS currency,
                 unnest(CAST(payload->'lines' AS JSON[])) AS line,
                 generate_subscripts(CAST(payload->'lines' AS JSON[]), 1) AS line_no
          FROM new_events WHERE event_type = 'CustomerPurchaseRecorded')
        """,
    ),
    DerivedTable(
        "dim_customer_history",
        "customer_key VARCHAR, valid_from TIMESTAMP, valid_to TIMESTAMP, is_current BOOLEAN,"
        " position BIGINT, kind VARCHAR, source VARCHAR, owner_id VARCHAR,"
        " lifecycle_stage VARCHAR, segment VARCHAR, industry VARCHAR, country VARCHAR",
        "A customer's attributes as history (a slowly changing dimension, type 2): one row per"
        " change, valid from its business time to the next change's (valid_to NULL: current)."
        " What was a customer's segment or owner on date D: valid_from <= D AND"
        " (valid_to > D OR valid_to IS NULL).",
        f"""
        SELECT customer_key, occurred_at, lead(occurred_at) OVER w,
               lead(occurred_at) OVER w IS NULL, position,
               last_value({_p('kind')} IGNORE NULLS) OVER w,
               last_value(coalesce({_p('source')}, payload->'changes'->'source'->>'after')
                          IGNORE NULLS) OVER w,
               last_value({_p('owner_id')} IGNORE NULLS) OVER w,
               last_value(coalesce({_p('to_stage')}, {_p('lifecycle_stage')}) IGNORE NULLS) OVER w,
               last_value({_p('segment')} IGNORE NULLS) OVER w,
               last_value(coalesce({_p('industry')}, payload->'changes'->'industry'->>'after')
                          IGNORE NULLS) OVER w,
               last_value(coalesce({_p('country')}, payload->'changes'->'country'->>'after')
                          IGNORE NULLS) OVER w
        FROM fact_events
        WHERE customer_key IN (SELECT k FROM touched) AND aggregate_type = 'customer'
          AND {_in(*CUSTOMER_ATTR_EVENTS)}
        WINDOW w AS (PARTITION BY customer_key ORDER BY occurred_at, position
                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        """,
        kind="keyed", key="customer_key",
        touched="SELECT DISTINCT customer_key AS k FROM new_events WHERE aggregate_type = 'customer'"
                f" AND {_in(*CUSTOMER_ATTR_EVENTS)}",
    ),
    DerivedTable(
        "customer_value",
        f"customer_key VARCHAR, currency VARCHAR, orders INTEGER, purchase_days INTEGER,"
        f" monetary {MONEY}, first_purchase_at TIMESTAMP, last_purchase_at TIMESTAMP,"
        " repeat_value_mean DOUBLE, last_activity_at TIMESTAMP, lifecycle_stage VARCHAR",
        "Per customer and currency bought in (currency NULL: never bought): orders, days with"
        " a purchase, total spent, first and last purchase, mean value of the repeat purchase"
        " days (all but the first), and the customer's last activity of any kind (purchase,"
        " interaction, opportunity opened) and current lifecycle stage, as of the latest"
        " event; the macro customer_value_at gives the same as of any cut-off (the base of"
        " RFM and lifetime value).",
        "\n        WITH " + _days_and_bought("purchases WHERE customer_key IN (SELECT k FROM touched)") + """,
        active AS (
          SELECT customer_key, max(active_at) AS last_activity_at FROM (
            SELECT customer_key, occurred_at AS active_at FROM interactions
              WHERE customer_key IN (SELECT k FROM touched)
            UNION ALL SELECT customer_key, last_at FROM bought
            UNION ALL SELECT customer_key, opened_at FROM opportunities
              WHERE customer_key IN (SELECT k FROM touched)) GROUP BY ALL)
        SELECT c.customer_key, b.currency, coalesce(b.orders, 0), coalesce(b.purchase_days, 0),
               b.monetary, b.first_at, b.last_at, b.repeat_mean, a.last_activity_at,
               c.lifecycle_stage
        FROM (SELECT customer_key, lifecycle_stage FROM dim_customer_history
              WHERE is_current AND customer_key IN (SELECT k FROM touched)) c
        LEFT JOIN active a USING (customer_key) LEFT JOIN bought b USING (customer_key)
        """,
        kind="keyed", key="customer_key",
        touched="SELECT DISTINCT customer_key AS k FROM new_events WHERE customer_key IS NOT NULL",
    ),
)

# lead() over a frame-limited window still sees the next row (lead ignores the frame).

FACT_EVENTS_COMMENT = (
    "Every event of the log, one row each, in log order: its metadata (who, when, why,"
    " correlation) and its non-personal fields as JSON (payload). position is the event's"
    " place in the log; customer_key the pseudonymous key of the customer it is about."
)

TABLE_COMMENTS = {
    "analytics_tracking": "The log position the database reflects (one row).",
    "dim_stage": "The stages of each sales pipeline in order, with their win probability.",
    "sla_target": "Service-level targets per request priority, in hours.",
}

# -- customer value, RFM and lifetime-value inputs as of a time -----------------------------
#: The current time as a UTC TIMESTAMP (the query's transaction start): the default cut-off
#: of the views over the macros below.
NOW = "CAST(timezone('UTC', current_timestamp) AS TIMESTAMP)"

#: name -> (parameters, SQL, description). Each is created as a table macro: ``SELECT *
#: FROM rfm_at(TIMESTAMP '2026-06-30')``. Only purchases at or before the cut-off
#: (``as_of_time``, UTC) count, and of a window start ``since_time`` (NULL: none), only
#: those after it. A customer counts when registered by the cut-off or when they bought by
#: then (a purchase recorded with an earlier business time than the registration); their
#: attributes (lifecycle stage, segment, owner) are those valid at the cut-off, or, before
#: the customer's first known state, that first state.
MACROS: dict[str, tuple[str, str, str]] = {
    "customer_value_at": ("as_of_time, since_time := NULL", """
        WITH p AS (
          SELECT customer_key, currency, purchased_at, amount FROM purchases
          WHERE purchased_at <= as_of_time AND (since_time IS NULL OR purchased_at > since_time)),
        """ + _days_and_bought("p") + """,
        attrs AS (
          SELECT customer_key, min(valid_from) AS registered_at,
                 coalesce(
                   arg_max({'lifecycle_stage': lifecycle_stage, 'segment': segment,
                            'owner_id': owner_id}, (valid_from, position))
                     FILTER (WHERE valid_from <= as_of_time),
                   arg_min({'lifecycle_stage': lifecycle_stage, 'segment': segment,
                            'owner_id': owner_id}, (valid_from, position))) AS a
          FROM dim_customer_history GROUP BY customer_key),
        active AS (
          SELECT customer_key, max(active_at) AS last_activity_at FROM (
            SELECT customer_key, occurred_at AS active_at FROM interactions
              WHERE occurred_at <= as_of_time
            UNION ALL SELECT customer_key, purchased_at FROM purchases
              WHERE purchased_at <= as_of_time
            UNION ALL SELECT customer_key, opened_at FROM opportunities
              WHERE opened_at <= as_of_time) GROUP BY ALL)
        SELECT c.customer_key, b.currency, coalesce(b.orders, 0) AS orders,
               coalesce(b.purchase_days, 0) AS purchase_days, b.monetary,
               b.first_at AS first_purchase_at, b.last_at AS last_purchase_at,
               b.repeat_mean AS repeat_value_mean, a.last_activity_at,
               c.a.lifecycle_stage AS lifecycle_stage, c.a.segment AS segment,
               c.a.owner_id AS owner_id, c.registered_at
        FROM attrs c LEFT JOIN active a USING (customer_key)
        LEFT JOIN bought b USING (customer_key)
        WHERE c.registered_at <= as_of_time OR b.customer_key IS NOT NULL""",
        "customer_value as of a cut-off: per customer and currency bought in (currency NULL:"
        " bought nothing in the window), only purchases at or before as_of_time (and after"
        " since_time, if given): orders, purchase days (UTC), total, first and last purchase,"
        " mean value of the repeat purchase days, the last activity by the cut-off, and the"
        " lifecycle stage, segment and owner valid at the cut-off (before the customer's"
        " registration: their first known ones)."),
    "rfm_at": ("as_of_time, since_time := NULL", """
        WITH v AS (
          SELECT *, epoch(last_purchase_at) AS r_value
          FROM customer_value_at(as_of_time, since_time)),
        cuts AS (
          SELECT currency,
                 quantile_cont(r_value, [0.2, 0.4, 0.6, 0.8]) AS r_cuts,
                 quantile_cont(orders, [0.2, 0.4, 0.6, 0.8]) AS f_cuts,
                 quantile_cont(monetary, [0.2, 0.4, 0.6, 0.8]) AS m_cuts
          FROM v WHERE currency IS NOT NULL GROUP BY ALL),
        scored AS (
          SELECT v.*, date_diff('day', v.last_purchase_at, as_of_time) AS recency_days,
                 1 + CAST(v.r_value > c.r_cuts[1] AS INTEGER) + CAST(v.r_value > c.r_cuts[2] AS INTEGER)
                   + CAST(v.r_value > c.r_cuts[3] AS INTEGER) + CAST(v.r_value > c.r_cuts[4] AS INTEGER) AS r_score,
                 1 + CAST(v.orders > c.f_cuts[1] AS INTEGER) + CAST(v.orders > c.f_cuts[2] AS INTEGER)
                   + CAST(v.orders > c.f_cuts[3] AS INTEGER) + CAST(v.orders > c.f_cuts[4] AS INTEGER) AS f_score,
                 1 + CAST(v.monetary > c.m_cuts[1] AS INTEGER) + CAST(v.monetary > c.m_cuts[2] AS INTEGER)
                   + CAST(v.monetary > c.m_cuts[3] AS INTEGER) + CAST(v.monetary > c.m_cuts[4] AS INTEGER) AS m_score
          FROM v LEFT JOIN cuts c USING (currency))
        SELECT CAST(as_of_time AS TIMESTAMP) AS as_of, s.customer_key, s.currency,
               s.last_purchase_at, s.recency_days, s.orders, s.purchase_days, s.monetary,
               CAST(CASE WHEN s.currency IS NOT NULL THEN s.r_score END AS INTEGER) AS r_score,
               CAST(CASE WHEN s.currency IS NOT NULL THEN s.f_score END AS INTEGER) AS f_score,
               CAST(CASE WHEN s.currency IS NOT NULL THEN s.m_score END AS INTEGER) AS m_score,
               s.last_activity_at, s.lifecycle_stage, s.segment,
               CASE
                 WHEN s.lifecycle_stage = 'churned' OR s.last_activity_at IS NULL
                      OR s.last_activity_at < as_of_time - INTERVAL 365 DAY
                   THEN 'churned'
                 WHEN s.m_score >= 4 AND s.f_score >= 4 AND s.r_score >= 3 THEN 'high-value'
                 WHEN s.r_score <= 2 AND (s.f_score >= 3 OR s.m_score >= 3) THEN 'at-risk'
                 WHEN s.r_score >= 3 OR s.last_activity_at >= as_of_time - INTERVAL 90 DAY
                   THEN 'potential'
                 ELSE 'occasional' END AS customer_class
        FROM scored s""",
        "Per customer (and currency bought in) as of as_of_time, over the purchases after"
        " since_time (NULL: all): recency in days, orders, purchase days, monetary, and the"
        " 1-5 scores (1 + how many of the currency's 20/40/60/80 % quantiles the value"
        " exceeds; F counts orders), and the class: churned (lifecycle churned at the"
        " cut-off, or no purchase, interaction or opportunity in the 365 days before it),"
        " high-value (M>=4, F>=4, R>=3), at-risk (R<=2 with F>=3 or M>=3), potential (R>=3,"
        " or active in the 90 days before the cut-off), else occasional."),
    "customer_classes_at": ("as_of_time, since_time := NULL", """
        SELECT CAST(as_of_time AS TIMESTAMP) AS as_of, customer_class,
               count(DISTINCT customer_key) AS customers
        FROM rfm_at(as_of_time, since_time) GROUP BY ALL ORDER BY customers DESC, customer_class""",
        "How many customers are in each class of rfm_at(as_of_time, since_time)."),
    "clv_inputs_at": ("as_of_time", """
        SELECT CAST(as_of_time AS TIMESTAMP) AS as_of, customer_key, currency,
               purchase_days - 1 AS repeat_purchase_days,
               date_diff('day', CAST(first_purchase_at AS DATE), CAST(last_purchase_at AS DATE))
                 AS recency_days,
               date_diff('day', CAST(first_purchase_at AS DATE), CAST(as_of_time AS DATE))
                 AS age_days,
               repeat_value_mean AS avg_repeat_value, lifecycle_stage, segment
        FROM customer_value_at(as_of_time) WHERE currency IS NOT NULL""",
        "Per customer and currency, the inputs of the lifetime-value model with calibration"
        " end as_of_time (purchases after it are ignored), in days: repeat purchase days"
        " (purchase days, UTC, after the first: the model's frequency), recency (first to"
        " last purchase day), age (first purchase day to the cut-off: the model's clock"
        " starts at the first purchase, not at registration), mean value of the repeat"
        " purchase days; with the lifecycle stage and segment valid at the cut-off."),
}

#: The KPI views that are a macro above at a cut-off: name -> (macro, whether it takes a
#: window start). The API and the report call the macro with an explicit cut-off.
AS_OF_KPIS: dict[str, tuple[str, bool]] = {
    "rfm": ("rfm_at", True),
    "customer_classes": ("customer_classes_at", True),
    "clv_inputs": ("clv_inputs_at", False),
}


def utc_naive(at: datetime) -> datetime:
    """A time as the naive UTC TIMESTAMP the tables store (a naive time is taken as UTC)."""
    return at if at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None)


def timestamp_literal(at: datetime) -> str:
    """A time as a DuckDB TIMESTAMP literal, in UTC."""
    return f"TIMESTAMP '{utc_naive(at).isoformat(sep=' ')}'"


def macro_call(macro: str, as_of: datetime, since: datetime | None = None) -> str:
    """``macro(TIMESTAMP '…'[, TIMESTAMP '…'])``: one of MACROS at a cut-off."""
    args = [timestamp_literal(as_of)] + ([timestamp_literal(since)] if since is not None else [])
    return f"{macro}({', '.join(args)})"


# -- KPI views ---------------------------------------------------------------------------
#: name -> (SQL, description). Each is created as view kpi_<name>. ``as_of`` is the time of
#: the latest event in the log, so those figures are a pure function of the log; kpi_rfm,
#: kpi_customer_classes and kpi_clv_inputs are as of now (the macros above at the current
#: time), so that an event logged today does not move their cut-off.
KPI_VIEWS: dict[str, tuple[str, str]] = {
    "funnel": ("""
        WITH reach AS (
          SELECT pipeline, date_trunc('month', opened_at) AS period,
                 furthest_stage_order AS furthest, count(*) AS n
          FROM opportunities GROUP BY ALL),
        steps AS (
          SELECT pipeline, stage, stage_order FROM dim_stage
          UNION ALL SELECT DISTINCT pipeline, 'won', 1000 FROM dim_stage),
        counts AS (
          SELECT r.pipeline, r.period, s.stage, s.stage_order,
                 coalesce(sum(r.n) FILTER (WHERE r.furthest >= s.stage_order), 0) AS reached
          FROM reach r JOIN steps s ON s.pipeline = r.pipeline GROUP BY ALL)
        SELECT pipeline, period, stage, stage_order, CAST(reached AS BIGINT) AS reached,
               reached / nullif(first_value(reached) OVER w, 0) AS conversion_from_start,
               reached / nullif(lag(reached) OVER w, 0) AS conversion_from_previous
        FROM counts WINDOW w AS (PARTITION BY pipeline, period ORDER BY stage_order)
        ORDER BY pipeline, period, stage_order""",
        "Opportunities opened in each month (period) that reached each stage or a later one"
        " (won counts as the last step), and the conversion from the first stage and from"
        " the previous one."),
    "win_rate": ("""
        SELECT pipeline, owner_id, date_trunc('month', closed_at) AS period,
               count(*) FILTER (WHERE status = 'won') AS won,
               count(*) FILTER (WHERE status = 'lost') AS lost,
               count(*) FILTER (WHERE status = 'won') / count(*) AS win_rate
        FROM opportunities WHERE status IN ('won', 'lost')
        GROUP BY GROUPING SETS ((), (pipeline), (pipeline, period), (pipeline, owner_id))
        ORDER BY ALL NULLS FIRST""",
        "Won / (won + lost) of the opportunities closed, overall (all keys NULL), per"
        " pipeline, per pipeline and month closed, per pipeline and owner."),
    "sales_cycle": ("""
        SELECT pipeline, date_trunc('month', closed_at) AS period, count(*) AS won,
               avg(cycle_days) AS avg_cycle_days, median(cycle_days) AS median_cycle_days
        FROM opportunities WHERE status = 'won'
        GROUP BY GROUPING SETS ((pipeline), (pipeline, period)) ORDER BY ALL NULLS FIRST""",
        "Days from opening to winning, of won opportunities, per pipeline (period NULL) and"
        " per month won."),
    "time_in_stage": ("""
        SELECT t.pipeline, t.stage, d.stage_order, count(*) AS spells,
               avg(t.days_in_stage) AS avg_days, median(t.days_in_stage) AS median_days
        FROM stage_transitions t JOIN dim_stage d USING (pipeline, stage)
        WHERE t.left_at IS NOT NULL GROUP BY ALL ORDER BY t.pipeline, d.stage_order""",
        "Days opportunities spent in each stage before leaving it (completed stays only)."),
    "forecast_weighted": ("""
        SELECT date_trunc('month', expected_close) AS close_month, currency,
               count(*) AS opportunities, sum(amount) AS pipeline_amount,
               sum(amount * probability / 100.0) AS weighted_amount
        FROM opportunities WHERE status = 'open' GROUP BY ALL ORDER BY ALL NULLS LAST""",
        "Open opportunities by expected close month and currency: amount, and amount"
        " weighted by each stage's probability."),
    "stage_win_rates": ("""
        SELECT pipeline, stage, count(*) AS closed, count(*) FILTER (WHERE status = 'won') AS won,
               count(*) FILTER (WHERE status = 'won') / count(*) AS historical_win_rate
        FROM (SELECT pipeline, status, unnest(stages_visited) AS stage
              FROM opportunities WHERE status IN ('won', 'lost'))
        GROUP BY ALL ORDER BY ALL""",
        "Of the closed opportunities that were ever in a stage, the share won: the"
        " historical win rate from that stage."),
    "forecast_historical": ("""
        SELECT date_trunc('month', o.expected_close) AS close_month, o.currency,
               count(*) AS opportunities, sum(o.amount) AS pipeline_amount,
               sum(o.amount * coalesce(r.historical_win_rate, 0)) AS expected_amount
        FROM opportunities o LEFT JOIN kpi_stage_win_rates r USING (pipeline, stage)
        WHERE o.status = 'open' GROUP BY ALL ORDER BY ALL NULLS LAST""",
        "Open opportunities by expected close month and currency, each weighted by the"
        " historical win rate from the stage it is in (kpi_stage_win_rates)."),
    "sla": ("""
        SELECT date_trunc('month', opened_at) AS period, priority, count(*) AS requests,
               count(*) FILTER (WHERE first_response_met) / nullif(count(first_response_met), 0)
                 AS first_response_compliance,
               count(*) FILTER (WHERE resolution_met) / nullif(count(resolution_met), 0)
                 AS resolution_compliance,
               avg(first_response_hours) AS avg_first_response_hours,
               median(first_response_hours) AS median_first_response_hours,
               avg(resolution_hours) AS avg_resolution_hours,
               median(resolution_hours) AS median_resolution_hours
        FROM service_request_sla
        GROUP BY GROUPING SETS ((), (period), (period, priority)) ORDER BY ALL NULLS FIRST""",
        "Service requests opened per month and priority: the share that met their first-"
        "response and resolution targets (of those decided: met, or missed), and the times."),
    "backlog": ("""
        SELECT priority, status, count(*) AS requests,
               count(*) FILTER (WHERE resolution_met = false) AS overdue,
               max(age_hours) AS oldest_hours, avg(age_hours) AS avg_age_hours
        FROM (SELECT *, date_diff('second', opened_at, (SELECT as_of FROM analytics_as_of))
                        / 3600.0 AS age_hours FROM service_request_sla)
        WHERE status NOT IN ('resolved', 'closed') GROUP BY ALL ORDER BY ALL""",
        "Service requests not resolved, by priority and status: how many, how many past their"
        " resolution target, their age."),
    "csat": ("""
        SELECT date_trunc('month', rated_at) AS period, agent_id, channel, request_type,
               count(*) AS ratings, avg(rating) AS avg_rating,
               count(*) FILTER (WHERE rating >= 4) / count(*) AS satisfied_share
        FROM satisfaction_ratings
        GROUP BY GROUPING SETS ((), (period), (agent_id), (channel), (request_type))
        ORDER BY ALL NULLS FIRST""",
        "Satisfaction ratings (1-5): average and share of 4-5, overall, per month, agent"
        " (assignee when rated), channel and request type; the other keys NULL."),
    "rfm": (f"SELECT * FROM rfm_at({NOW})",
        "Per customer (and currency bought in) as of now (the as_of column; rfm_at(T) gives"
        " any other time): recency, orders (F counts orders), purchase days, monetary, their"
        " 1-5 scores and the class; see the macro rfm_at."),
    "customer_classes": (f"SELECT * FROM customer_classes_at({NOW})",
        "How many customers are in each class of kpi_rfm, as of now (the as_of column;"
        " customer_classes_at(T) gives any other time)."),
    "churn_rate": ("""
        WITH months AS (
          SELECT unnest(generate_series(date_trunc('month', min(valid_from)),
                        date_trunc('month', (SELECT as_of FROM analytics_as_of)),
                        INTERVAL 1 MONTH)) AS period FROM dim_customer_history),
        base AS (
          SELECT m.period, count(*) AS customers_at_start
          FROM months m JOIN dim_customer_history h ON h.valid_from <= m.period
            AND (h.valid_to > m.period OR h.valid_to IS NULL) AND h.lifecycle_stage = 'customer'
          GROUP BY ALL),
        churned AS (
          SELECT date_trunc('month', h.valid_from) AS period, count(DISTINCT h.customer_key) AS churned
          FROM dim_customer_history h JOIN dim_customer_history prev
            ON prev.customer_key = h.customer_key AND prev.valid_to = h.valid_from
           AND prev.lifecycle_stage = 'customer'
          WHERE h.lifecycle_stage = 'churned' GROUP BY ALL)
        SELECT m.period, coalesce(b.customers_at_start, 0) AS customers_at_start,
               coalesce(c.churned, 0) AS churned,
               coalesce(c.churned, 0) / nullif(b.customers_at_start, 0) AS churn_rate
        FROM months m LEFT JOIN base b USING (period) LEFT JOIN churned c USING (period)
        ORDER BY m.period""",
        "Per month: customers in lifecycle stage customer at its start, how many of them moved"
        " to churned during it, and the rate."),
    "repeat_purchase": ("""
        SELECT currency, count(*) AS buyers,
               count(*) FILTER (WHERE orders >= 2) AS repeat_buyers_orders,
               count(*) FILTER (WHERE orders >= 2) / count(*) AS repeat_purchase_rate_orders,
               count(*) FILTER (WHERE days >= 2) AS repeat_buyers_days,
               count(*) FILTER (WHERE days >= 2) / count(*) AS repeat_purchase_rate_days
        FROM (SELECT customer_key, currency, count(*) AS orders,
                     count(DISTINCT CAST(purchased_at AS DATE)) AS days
              FROM purchases GROUP BY ALL)
        GROUP BY ALL ORDER BY ALL""",
        "Of the customers who bought (in a currency): the share with at least two orders"
        " (repeat_purchase_rate_orders) and the share who bought on at least two days (UTC)"
        " (repeat_purchase_rate_days, the lifetime-value model's count: two orders on one day"
        " are one purchase there)."),
    "aov": ("""
        SELECT currency, date_trunc('month', purchased_at) AS period, count(*) AS orders,
               sum(amount) AS revenue, sum(amount) / count(*) AS average_order_value
        FROM purchases GROUP BY GROUPING SETS ((currency), (currency, period))
        ORDER BY ALL NULLS FIRST""",
        "Average order value per currency, overall (period NULL) and per month."),
    "pipeline_by_stage": ("""
        SELECT o.pipeline, o.stage, d.stage_order, o.currency, count(*) AS opportunities,
               sum(o.amount) AS amount, sum(o.amount * o.probability / 100.0) AS weighted_amount
        FROM opportunities o LEFT JOIN dim_stage d USING (pipeline, stage)
        WHERE o.status = 'open' GROUP BY ALL ORDER BY o.pipeline, d.stage_order, o.currency""",
        "Open pipeline per stage and currency."),
    "clv_inputs": (f"SELECT * FROM clv_inputs_at({NOW})",
        "Per customer and currency, the inputs of the lifetime-value model as of now (the"
        " as_of column; clv_inputs_at(T) gives any other calibration end); see the macro"
        " clv_inputs_at."),
}

SUPPORT_VIEWS = {
    "analytics_as_of": (
        "SELECT coalesce(max(occurred_at), TIMESTAMP '1970-01-01') AS as_of FROM fact_events",
        "The time of the latest event (business time): KPIs are as of then."),
    "dim_customer": (
        "SELECT * EXCLUDE (valid_to, is_current) FROM dim_customer_history WHERE is_current",
        "Each customer's current attributes."),
    "dim_customer_owner_history": ("""
        SELECT customer_key, owner_id, min(valid_from) AS valid_from,
               CASE WHEN bool_or(valid_to IS NULL) THEN NULL ELSE max(valid_to) END AS valid_to
        FROM (SELECT *, sum(CASE WHEN owner_id IS DISTINCT FROM prev THEN 1 ELSE 0 END)
                        OVER (PARTITION BY customer_key ORDER BY valid_from, position) AS spell
              FROM (SELECT *, lag(owner_id) OVER (PARTITION BY customer_key ORDER BY valid_from,
                                                   position) AS prev FROM dim_customer_history))
        GROUP BY customer_key, owner_id, spell""",
        "Who owned each customer when: one row per ownership spell."),
    "dim_owner": ("""
        SELECT owner_id, count(DISTINCT customer_key) FILTER (WHERE is_current) AS customers_now,
               min(valid_from) AS first_owned_at
        FROM dim_customer_history WHERE owner_id IS NOT NULL GROUP BY ALL""",
        "Owners (sales reps) with how many customers they own now."),
    "service_request_sla": ("""
        SELECT r.*, t.first_response_hours AS first_response_target_hours,
               t.resolution_hours AS resolution_target_hours,
               CASE WHEN r.first_response_at IS NOT NULL
                      THEN r.first_response_hours <= t.first_response_hours
                    WHEN date_diff('second', r.opened_at, (SELECT as_of FROM analytics_as_of))
                         / 3600.0 > t.first_response_hours THEN false END AS first_response_met,
               CASE WHEN r.resolved_at IS NOT NULL THEN r.resolution_hours <= t.resolution_hours
                    WHEN date_diff('second', r.opened_at, (SELECT as_of FROM analytics_as_of))
                         / 3600.0 > t.resolution_hours THEN false END AS resolution_met
        FROM service_requests r LEFT JOIN sla_target t USING (priority)""",
        "Service requests with their SLA targets and whether each was met: true, false (late,"
        " or still open past its target), NULL (open and still within it)."),
}


def view_ddl() -> list[str]:
    """CREATE VIEW statements of the support and KPI views, in dependency order."""
    out = [f"CREATE OR REPLACE VIEW {name} AS {sql}" for name, (sql, _) in SUPPORT_VIEWS.items()]
    out += [f"CREATE OR REPLACE MACRO {name}({params}) AS TABLE {sql}"
            for name, (params, sql, _) in MACROS.items()]
    # kpi_stage_win_rates before kpi_forecast_historical, kpi_rfm before customer_classes
    out += [f"CREATE OR REPLACE VIEW kpi_{name} AS {sql}" for name, (sql, _) in KPI_VIEWS.items()]
    return out


def comment_ddl() -> list[str]:
    """COMMENT ON statements: every table and view documents itself in DuckDB's catalog."""

    def q(text: str) -> str:
        return "'" + " ".join(text.split()).replace("'", "''") + "'"

    out = [f"COMMENT ON TABLE fact_events IS {q(FACT_EVENTS_COMMENT)}"]
    out += [f"COMMENT ON TABLE {t.name} IS {q(t.comment)}" for t in TABLES]
    out += [f"COMMENT ON TABLE {n} IS {q(c)}" for n, c in TABLE_COMMENTS.items()]
    out += [f"COMMENT ON VIEW {n} IS {q(d)}" for n, (_, d) in SUPPORT_VIEWS.items()]
    out += [f"COMMENT ON VIEW kpi_{n} IS {q(d)}" for n, (_, d) in KPI_VIEWS.items()]
    out += [f"COMMENT ON MACRO TABLE {n} IS {q(d)}" for n, (_, _, d) in MACROS.items()]
    return out


#: Tables an export writes (and a rebuild compares): the star, not the configuration.
DATA_TABLES = ("fact_events", *(t.name for t in TABLES))
KPI_NAMES = tuple(KPI_VIEWS)
