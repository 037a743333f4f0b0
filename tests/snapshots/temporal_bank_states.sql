SELECT
  aggregate_id,
  max(aggregate_version) AS version,
  CAST(coalesce(CAST(sum(CASE event_type WHEN 'AccountOpened' THEN TRY_CAST(json_extract_string(data, '$.initialDeposit') AS DECIMAL(18,4)) WHEN 'MoneyDeposited' THEN TRY_CAST(json_extract_string(data, '$.amount') AS DECIMAL(18,4)) WHEN 'MoneyWithdrawn' THEN (-TRY_CAST(json_extract_string(data, '$.amount') AS DECIMAL(18,4))) END) FILTER (WHERE event_type IN ('AccountOpened', 'MoneyDeposited', 'MoneyWithdrawn')) AS DECIMAL(38,4)), CAST(0 AS DECIMAL(38,4))) AS DECIMAL(38,4)) AS "balance",
  CAST(CASE WHEN max(aggregate_version) FILTER (WHERE event_type IN ('AccountOpened', 'AccountClosed')) IS NULL THEN 'pending' ELSE arg_max_null(CASE event_type WHEN 'AccountOpened' THEN 'active' WHEN 'AccountClosed' THEN 'closed' END, aggregate_version) FILTER (WHERE event_type IN ('AccountOpened', 'AccountClosed')) END AS VARCHAR) AS "status",
  CAST(arg_max_null(CASE WHEN event_type IN ('AccountOpened') THEN json_extract_string(data, '$.accountHolder') END, aggregate_version) FILTER (WHERE event_type IN ('AccountOpened')) AS VARCHAR) AS "account_holder"
FROM events
WHERE aggregate_type = ? AND occurred_at <= ? AND recorded_at <= ?
GROUP BY aggregate_id
ORDER BY aggregate_id
