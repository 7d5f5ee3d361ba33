-- Figures are whole numbers of minor units. SQLite quietly stores a sum that leaves the 64-bit
-- range as a floating-point number, after which every reader of that row fails. The
-- aggregator refuses an event with no room first (`Aggregator::admit`); these triggers make
-- sure that even so no such value is ever stored: the write fails and its transaction with it.
-- (PostgreSQL's BIGINT refuses such a value by itself.)
CREATE TRIGGER minute_stats_integer_insert AFTER INSERT ON minute_stats
WHEN typeof(NEW.orders) <> 'integer' OR typeof(NEW.revenue_minor) <> 'integer'
    OR typeof(NEW.active_users) <> 'integer'
BEGIN
    SELECT RAISE(ABORT, 'minute_stats: figures must be 64-bit integers');
END;

CREATE TRIGGER minute_stats_integer_update AFTER UPDATE ON minute_stats
WHEN typeof(NEW.orders) <> 'integer' OR typeof(NEW.revenue_minor) <> 'integer'
    OR typeof(NEW.active_users) <> 'integer'
BEGIN
    SELECT RAISE(ABORT, 'minute_stats: figures must be 64-bit integers');
END;

CREATE TRIGGER daily_revenue_integer_insert AFTER INSERT ON daily_revenue
WHEN typeof(NEW.revenue_minor) <> 'integer'
BEGIN
    SELECT RAISE(ABORT, 'daily_revenue: figures must be 64-bit integers');
END;

CREATE TRIGGER daily_revenue_integer_update AFTER UPDATE ON daily_revenue
WHEN typeof(NEW.revenue_minor) <> 'integer'
BEGIN
    SELECT RAISE(ABORT, 'daily_revenue: figures must be 64-bit integers');
END;
