-- Cross-shard correctness oracle corpus (run by tests/cross_shard_oracle.rs).
--
-- Every query runs through shardgate (three shards) and directly on one
-- unsharded Postgres holding the same rows; both answers must be identical
-- (column names, column types, row count, values; float4/float8 within a
-- relative 1e-12). Each query runs in the simple protocol, the extended
-- protocol with binary results and the extended protocol with text results.
--
-- Syntax
--   * One entry per line. A line that starts with whitespace continues the
--     previous entry. A trailing ';' is optional.
--   * Blank lines and lines starting with '--' are comments.
--   * '-- @name' starts a category (used in the per-category summary).
--   * An entry may start with comma-separated flags and a colon:
--       ordered:  compare rows in order (only when ORDER BY gives a total
--                 order: unique sort keys or a unique column last);
--                 without it rows are compared as multisets
--       refuse:   the proxy must refuse with SQLSTATE 0A000 (answering
--                 exactly the oracle's result is also accepted)
--       tx:       run inside BEGIN ... ROLLBACK on both sides (writes)
--       error:    both must fail with the same SQLSTATE
--     e.g.  ordered: SELECT id FROM orders ORDER BY id LIMIT 3
--           tx,ordered: ...
--   * Default: the proxy must return exactly the oracle's result.
--
-- Schema (see tests/cross_shard_oracle.rs, data generated deterministically):
--   customers(id bigint PK, name text, country text, created timestamp, vip bool,
--             score int2, tier int4 NOT NULL, credit numeric(10,3))          sharded by id (hash)
--             520 rows, ids 1..500 and -1..-20
--   orders(id bigint, customer_id bigint, amount numeric(12,2), qty int4, big int8,
--          weight float8, ratio float4, status text, placed date, note varchar(20),
--          small int2, price numeric (scales 0-4), paid bool)          sharded by customer_id (hash)
--             3000 rows, id 1..3000 unique; ~2% orphan customer_id 9000..9019;
--             big has six values near 9e18 (sum overflows int8)
--   events(id bigint PK, kind text, value int8, ok bool, at timestamp)         sharded by id (hash)
--             1200 rows, ids 3,6,...,3450 and -1151..-1200
--   countries(code text PK, name text, region text)                  reference table (7 rows)
--   empty_t(k bigint, v int4, n numeric, f float8, t text, b bool, d date)  sharded by k, empty
--   tiers(tier int4, label text)                   unsharded (default shard only, 4 rows)
-- Most columns have NULLs; customers.country has codes not in countries
-- ('xx', 'FR'); customers, orders and events text columns have duplicates,
-- case variants and trailing spaces.

-- @concat
-- Rows of all shards concatenated (no ORDER BY: compared as multisets).
SELECT * FROM orders
SELECT * FROM customers
SELECT * FROM events
SELECT id, status FROM orders WHERE qty > 25
SELECT id, amount * qty AS total, amount::text AS a FROM orders WHERE status = 'paid'
SELECT id, name FROM customers WHERE vip
SELECT id FROM orders WHERE amount IS NULL
SELECT id, kind, value FROM events WHERE kind = 'view ' OR value BETWEEN 0 AND 1000
SELECT customer_id, id, price FROM orders WHERE price < 0 AND note IS NOT NULL
SELECT 'x' AS c FROM orders LIMIT 5
SELECT id, coalesce(note, '<none>') AS note, length(note) FROM orders WHERE small < -900
SELECT id, created::date AS d, extract(year FROM created) AS y FROM customers WHERE score > 90
SELECT id, weight, ratio, weight * 2 AS w2 FROM orders WHERE weight > 14000
SELECT id, upper(kind), value / 3 AS v3, value % 7 AS v7 FROM events WHERE ok IS NULL
SELECT * FROM orders WHERE false
SELECT id FROM orders WHERE customer_id >= 9000

-- @order
-- ORDER BY on selected and non-selected expressions, ASC/DESC, NULLS FIRST/LAST, multi-key.
ordered: SELECT id, amount FROM orders ORDER BY id
ordered: SELECT id, amount FROM orders ORDER BY id DESC
ordered: SELECT id FROM orders ORDER BY amount, id
ordered: SELECT id, amount FROM orders ORDER BY amount DESC, id
ordered: SELECT id, amount FROM orders ORDER BY amount ASC NULLS FIRST, id DESC
ordered: SELECT id, amount FROM orders ORDER BY amount DESC NULLS LAST, id
ordered: SELECT id, qty, small FROM orders ORDER BY qty NULLS FIRST, small DESC NULLS LAST, id
ordered: SELECT id, status FROM orders ORDER BY status, id
ordered: SELECT id, status FROM orders ORDER BY status DESC, id DESC
ordered: SELECT id FROM orders ORDER BY status DESC NULLS LAST, placed NULLS FIRST, id
ordered: SELECT id, weight FROM orders ORDER BY weight, id
ordered: SELECT id, ratio FROM orders ORDER BY ratio DESC, id
ordered: SELECT id, big FROM orders ORDER BY big, id
ordered: SELECT id, price FROM orders ORDER BY price DESC NULLS LAST, id
ordered: SELECT id, placed FROM orders ORDER BY placed, id
ordered: SELECT id, paid FROM orders ORDER BY paid, id
ordered: SELECT id, note FROM orders ORDER BY note NULLS FIRST, id
ordered: SELECT id FROM orders ORDER BY qty * 2 DESC, id
ordered: SELECT id, status FROM orders ORDER BY lower(status), id
ordered: SELECT id FROM orders ORDER BY coalesce(amount, 0) DESC, id
ordered: SELECT id, amount AS a FROM orders ORDER BY a, id
ordered: SELECT amount, id FROM orders ORDER BY 1, 2
ordered: SELECT id, customer_id FROM orders ORDER BY customer_id, id
ordered: SELECT * FROM customers ORDER BY id
ordered: SELECT id, name FROM customers ORDER BY name, id
ordered: SELECT id, created FROM customers ORDER BY created DESC, id
ordered: SELECT id, created FROM customers ORDER BY created NULLS FIRST, id
ordered: SELECT id FROM customers ORDER BY vip NULLS FIRST, score DESC NULLS LAST, id
ordered: SELECT id, credit FROM customers ORDER BY credit, id
ordered: SELECT id, score FROM customers ORDER BY score, tier, id
ordered: SELECT name, id FROM customers ORDER BY country DESC NULLS FIRST, name, id
ordered: SELECT * FROM events ORDER BY id
ordered: SELECT id, kind FROM events ORDER BY kind, id DESC
ordered: SELECT id, value FROM events ORDER BY value DESC NULLS FIRST, id
ordered: SELECT id, at FROM events ORDER BY at, id
ordered: SELECT id FROM events ORDER BY abs(value), id
ordered: SELECT id, value FROM events WHERE kind = 'buy' ORDER BY value, id
ordered: SELECT id, ok FROM events ORDER BY ok DESC, id
ordered: SELECT id FROM orders WHERE qty > 1000 ORDER BY id
-- Without a total order: compared as multisets.
SELECT id, status FROM orders ORDER BY status
SELECT qty FROM orders ORDER BY qty DESC
SELECT kind FROM events ORDER BY kind NULLS FIRST

-- @limit
-- LIMIT, OFFSET and both (always over a total order).
ordered: SELECT id, amount FROM orders ORDER BY id LIMIT 10
ordered: SELECT id, amount FROM orders ORDER BY amount DESC NULLS LAST, id LIMIT 10
ordered: SELECT id, amount FROM orders ORDER BY amount NULLS FIRST, id LIMIT 10
ordered: SELECT id FROM orders ORDER BY id OFFSET 2990
ordered: SELECT id FROM orders ORDER BY id DESC OFFSET 2995
ordered: SELECT id, weight FROM orders ORDER BY weight DESC NULLS LAST, id LIMIT 5 OFFSET 100
ordered: SELECT id FROM orders ORDER BY id LIMIT 0
ordered: SELECT id FROM orders ORDER BY id OFFSET 5000
ordered: SELECT id FROM orders ORDER BY id LIMIT 3 OFFSET 5000
ordered: SELECT id FROM orders ORDER BY id LIMIT ALL OFFSET 2998
ordered: SELECT id FROM orders ORDER BY id FETCH FIRST 7 ROWS ONLY
ordered: SELECT id FROM orders ORDER BY id OFFSET 10 ROWS FETCH NEXT 3 ROWS ONLY
ordered: SELECT id, status FROM orders ORDER BY status DESC, id LIMIT 20 OFFSET 1
ordered: SELECT id, big FROM orders ORDER BY big DESC NULLS LAST, id LIMIT 8
ordered: SELECT id, name FROM customers ORDER BY name DESC NULLS LAST, id LIMIT 15
ordered: SELECT id, created FROM customers ORDER BY created, id LIMIT 10 OFFSET 10
ordered: SELECT id, value FROM events ORDER BY value, id LIMIT 25
ordered: SELECT id FROM events ORDER BY id LIMIT 1
ordered: SELECT id FROM customers ORDER BY id LIMIT 5 OFFSET 515
ordered: SELECT id, price FROM orders WHERE price IS NOT NULL ORDER BY price, id LIMIT 12
ordered: SELECT id, qty FROM orders ORDER BY qty DESC NULLS FIRST, id LIMIT 4 OFFSET 150
ordered: SELECT id FROM orders ORDER BY placed DESC NULLS LAST, id LIMIT 9
ordered: SELECT id FROM empty_t AS e(id) ORDER BY id LIMIT 5
-- Unordered comparison, total order for determinism.
SELECT id, amount FROM orders ORDER BY id LIMIT 50

-- @agg-whole
-- One aggregate at a time over a whole sharded table.
SELECT count(small) FROM orders
SELECT min(small) FROM orders
SELECT max(small) FROM orders
SELECT sum(small) FROM orders
SELECT avg(small) FROM orders
SELECT count(qty) FROM orders
SELECT min(qty) FROM orders
SELECT max(qty) FROM orders
SELECT sum(qty) FROM orders
SELECT avg(qty) FROM orders
SELECT count(big) FROM orders
SELECT min(big) FROM orders
SELECT max(big) FROM orders
SELECT sum(big) FROM orders
SELECT avg(big) FROM orders
SELECT count(amount) FROM orders
SELECT min(amount) FROM orders
SELECT max(amount) FROM orders
SELECT sum(amount) FROM orders
SELECT avg(amount) FROM orders
SELECT count(price) FROM orders
SELECT min(price) FROM orders
SELECT max(price) FROM orders
SELECT sum(price) FROM orders
SELECT avg(price) FROM orders
SELECT count(weight) FROM orders
SELECT min(weight) FROM orders
SELECT max(weight) FROM orders
SELECT sum(weight) FROM orders
SELECT avg(weight) FROM orders
SELECT count(ratio) FROM orders
SELECT min(ratio) FROM orders
SELECT max(ratio) FROM orders
SELECT sum(ratio) FROM orders
SELECT avg(ratio) FROM orders
SELECT count(status) FROM orders
SELECT min(status) FROM orders
SELECT max(status) FROM orders
SELECT count(note) FROM orders
SELECT min(note) FROM orders
SELECT max(note) FROM orders
SELECT count(placed) FROM orders
SELECT min(placed) FROM orders
SELECT max(placed) FROM orders
SELECT count(paid) FROM orders
SELECT bool_and(paid) FROM orders
SELECT bool_or(paid) FROM orders
SELECT every(paid) FROM orders
SELECT count(score) FROM customers
SELECT min(score) FROM customers
SELECT max(score) FROM customers
SELECT sum(score) FROM customers
SELECT avg(score) FROM customers
SELECT count(tier) FROM customers
SELECT min(tier) FROM customers
SELECT max(tier) FROM customers
SELECT sum(tier) FROM customers
SELECT avg(tier) FROM customers
SELECT count(credit) FROM customers
SELECT min(credit) FROM customers
SELECT max(credit) FROM customers
SELECT sum(credit) FROM customers
SELECT avg(credit) FROM customers
SELECT count(created) FROM customers
SELECT min(created) FROM customers
SELECT max(created) FROM customers
SELECT count(vip) FROM customers
SELECT bool_and(vip) FROM customers
SELECT bool_or(vip) FROM customers
SELECT every(vip) FROM customers
SELECT count(name) FROM customers
SELECT min(name) FROM customers
SELECT max(name) FROM customers
SELECT count(value) FROM events
SELECT min(value) FROM events
SELECT max(value) FROM events
SELECT sum(value) FROM events
SELECT avg(value) FROM events
SELECT count(kind) FROM events
SELECT min(kind) FROM events
SELECT max(kind) FROM events
SELECT count(at) FROM events
SELECT min(at) FROM events
SELECT max(at) FROM events
SELECT count(ok) FROM events
SELECT bool_and(ok) FROM events
SELECT bool_or(ok) FROM events
SELECT every(ok) FROM events

-- @agg-multi
-- Several aggregates per statement, with and without a filter.
SELECT count(*), min(small), max(small), sum(small), avg(small), min(qty), max(qty), sum(qty), avg(qty), min(big), max(big), sum(big), avg(big), min(amount), max(amount), sum(amount), avg(amount), min(price), max(price), sum(price), avg(price), min(weight), max(weight), sum(weight), avg(weight), min(ratio), max(ratio), sum(ratio), avg(ratio), min(status), max(status), min(note), max(note), min(placed), max(placed), bool_and(paid), bool_or(paid) FROM orders
SELECT count(*), min(small), max(small), sum(small), avg(small), min(qty), max(qty), sum(qty), avg(qty), min(big), max(big), sum(big), avg(big), min(amount), max(amount), sum(amount), avg(amount), min(price), max(price), sum(price), avg(price), min(weight), max(weight), sum(weight), avg(weight), min(ratio), max(ratio), sum(ratio), avg(ratio), min(status), max(status), min(note), max(note), min(placed), max(placed), bool_and(paid), bool_or(paid) FROM orders WHERE qty > 0
SELECT count(*), min(score), max(score), sum(score), avg(score), min(tier), max(tier), sum(tier), avg(tier), min(credit), max(credit), sum(credit), avg(credit), min(created), max(created), bool_and(vip), bool_or(vip), min(name), max(name) FROM customers
SELECT count(*), min(score), max(score), sum(score), avg(score), min(tier), max(tier), sum(tier), avg(tier), min(credit), max(credit), sum(credit), avg(credit), min(created), max(created), bool_and(vip), bool_or(vip), min(name), max(name) FROM customers WHERE tier <> 2
SELECT count(*), min(value), max(value), sum(value), avg(value), min(kind), max(kind), min(at), max(at), bool_and(ok), bool_or(ok) FROM events
SELECT count(*), min(value), max(value), sum(value), avg(value), min(kind), max(kind), min(at), max(at), bool_and(ok), bool_or(ok) FROM events WHERE value < 0

-- @agg-grouped
-- Every aggregate per group; groups include NULL keys.
ordered: SELECT status, count(small), min(small), max(small), sum(small), avg(small) FROM orders GROUP BY status ORDER BY status
ordered: SELECT status, count(qty), min(qty), max(qty), sum(qty), avg(qty) FROM orders GROUP BY status ORDER BY status
ordered: SELECT status, count(big), min(big), max(big), sum(big), avg(big) FROM orders GROUP BY status ORDER BY status
ordered: SELECT status, count(amount), min(amount), max(amount), sum(amount), avg(amount) FROM orders GROUP BY status ORDER BY status
ordered: SELECT status, count(price), min(price), max(price), sum(price), avg(price) FROM orders GROUP BY status ORDER BY status
ordered: SELECT status, count(weight), min(weight), max(weight), sum(weight), avg(weight) FROM orders GROUP BY status ORDER BY status
ordered: SELECT status, count(ratio), min(ratio), max(ratio), sum(ratio), avg(ratio) FROM orders GROUP BY status ORDER BY status
ordered: SELECT status, count(placed), min(placed), max(placed) FROM orders GROUP BY status ORDER BY status
ordered: SELECT status, count(note), min(note), max(note) FROM orders GROUP BY status ORDER BY status
ordered: SELECT status, count(paid), bool_and(paid), bool_or(paid) FROM orders GROUP BY status ORDER BY status
ordered: SELECT tier, count(score), min(score), max(score), sum(score), avg(score) FROM customers GROUP BY tier ORDER BY tier
ordered: SELECT tier, count(credit), min(credit), max(credit), sum(credit), avg(credit) FROM customers GROUP BY tier ORDER BY tier
ordered: SELECT tier, count(created), min(created), max(created) FROM customers GROUP BY tier ORDER BY tier
ordered: SELECT tier, count(vip), bool_and(vip), bool_or(vip) FROM customers GROUP BY tier ORDER BY tier
ordered: SELECT tier, count(name), min(name), max(name) FROM customers GROUP BY tier ORDER BY tier
ordered: SELECT tier, count(country), min(country), max(country) FROM customers GROUP BY tier ORDER BY tier
ordered: SELECT kind, count(value), min(value), max(value), sum(value), avg(value) FROM events GROUP BY kind ORDER BY kind
ordered: SELECT kind, count(at), min(at), max(at) FROM events GROUP BY kind ORDER BY kind
ordered: SELECT kind, count(ok), bool_and(ok), bool_or(ok) FROM events GROUP BY kind ORDER BY kind
ordered: SELECT kind, count(id), min(id), max(id), sum(id), avg(id) FROM events GROUP BY kind ORDER BY kind

-- @group-by
-- GROUP BY on columns (NULL group keys included), several keys, positional.
ordered: SELECT status, count(*) FROM orders GROUP BY status ORDER BY status
SELECT status, count(*) FROM orders GROUP BY status
ordered: SELECT status, paid, count(*), sum(qty) FROM orders GROUP BY status, paid ORDER BY status, paid
SELECT paid, status, count(*) FROM orders GROUP BY 1, 2
ordered: SELECT tier, vip, count(*), avg(score) FROM customers GROUP BY tier, vip ORDER BY tier DESC, vip NULLS FIRST
ordered: SELECT country, count(*), min(created), max(created) FROM customers GROUP BY country ORDER BY country NULLS FIRST
ordered: SELECT kind, ok, count(*), sum(value) FROM events GROUP BY kind, ok ORDER BY kind, ok
ordered: SELECT customer_id, count(*), sum(amount) FROM orders GROUP BY customer_id ORDER BY customer_id
SELECT customer_id, count(*), max(placed) FROM orders GROUP BY customer_id
ordered: SELECT qty, count(*) FROM orders GROUP BY qty ORDER BY qty NULLS FIRST
ordered: SELECT small, count(*) FROM orders WHERE small BETWEEN -20 AND 20 GROUP BY small ORDER BY small
ordered: SELECT placed, count(*), sum(amount) FROM orders GROUP BY placed ORDER BY placed DESC NULLS LAST
ordered: SELECT note, count(*) FROM orders GROUP BY note ORDER BY note
ordered: SELECT name, count(*) FROM customers GROUP BY name ORDER BY name
ordered: SELECT ratio, count(*) FROM orders WHERE ratio > 20 GROUP BY ratio ORDER BY ratio
ordered: SELECT status, count(*) FROM orders GROUP BY status ORDER BY count(*) DESC, status
ordered: SELECT status, sum(amount) AS s FROM orders GROUP BY status ORDER BY s DESC NULLS LAST, status
ordered: SELECT status FROM orders GROUP BY status ORDER BY max(id) DESC
ordered: SELECT status, count(*) FROM orders GROUP BY status ORDER BY count(*) DESC, status LIMIT 3
ordered: SELECT status, count(*) FROM orders GROUP BY status ORDER BY status NULLS FIRST LIMIT 2 OFFSET 2
ordered: SELECT customer_id, sum(qty) FROM orders GROUP BY customer_id ORDER BY sum(qty) DESC NULLS LAST, customer_id LIMIT 10
ordered: SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind DESC NULLS FIRST
ordered: SELECT vip, count(*), bool_and(score > 0), bool_or(score > 90) FROM customers GROUP BY vip ORDER BY vip
ordered: SELECT tier, sum(credit), avg(credit), min(credit), max(credit) FROM customers GROUP BY tier ORDER BY tier

-- @group-expr
-- GROUP BY expressions.
ordered: SELECT date_trunc('month', created) AS m, count(*) FROM customers GROUP BY 1 ORDER BY 1
ordered: SELECT date_trunc('month', created) AS m, count(*), min(id) FROM customers GROUP BY date_trunc('month', created) ORDER BY m DESC NULLS LAST
ordered: SELECT date_trunc('week', at) AS w, count(*), sum(value) FROM events GROUP BY 1 ORDER BY 1
ordered: SELECT date_trunc('month', placed::timestamp) AS m, sum(amount) FROM orders GROUP BY 1 ORDER BY 1
ordered: SELECT qty % 3 AS r, count(*), sum(qty) FROM orders GROUP BY qty % 3 ORDER BY r
ordered: SELECT qty % 3, count(*) FROM orders GROUP BY 1 ORDER BY 1 NULLS FIRST
ordered: SELECT customer_id % 5 AS b, count(*), avg(amount) FROM orders GROUP BY 1 ORDER BY 1
ordered: SELECT lower(status) AS s, count(*) FROM orders GROUP BY lower(status) ORDER BY s
ordered: SELECT extract(dow FROM placed) AS dow, count(*) FROM orders GROUP BY 1 ORDER BY 1
ordered: SELECT extract(year FROM created) AS y, extract(month FROM created) AS mo, count(*) FROM customers GROUP BY 1, 2 ORDER BY 1, 2
ordered: SELECT amount > 0 AS positive, count(*), sum(amount) FROM orders GROUP BY amount > 0 ORDER BY 1
ordered: SELECT (value / 100000) AS bucket, count(*) FROM events GROUP BY 1 ORDER BY 1
ordered: SELECT coalesce(kind, '?') AS k, count(*) FROM events GROUP BY coalesce(kind, '?') ORDER BY k
ordered: SELECT length(note) AS l, count(*) FROM orders GROUP BY length(note) ORDER BY l
ordered: SELECT floor(weight / 1000) AS b, count(*), sum(weight) FROM orders GROUP BY 1 ORDER BY 1
ordered: SELECT substr(name, 1, 5) AS p, count(*) FROM customers GROUP BY 1 ORDER BY 1
ordered: SELECT placed - date '2023-01-01' AS day, count(*) FROM orders WHERE placed < date '2023-01-15' GROUP BY 1 ORDER BY 1
SELECT id % 4, count(*) FROM events GROUP BY id % 4
ordered: SELECT status IS NULL AS n, count(*) FROM orders GROUP BY 1 ORDER BY 1

-- @having
-- HAVING on aggregates, including aggregates not in the select list.
ordered: SELECT status, count(*) FROM orders GROUP BY status HAVING count(*) > 450 ORDER BY status
ordered: SELECT status FROM orders GROUP BY status HAVING sum(qty) > 3000 ORDER BY status
ordered: SELECT status, avg(amount) FROM orders GROUP BY status HAVING max(amount) > 1400 ORDER BY status
ordered: SELECT customer_id, count(*) FROM orders GROUP BY customer_id HAVING count(*) >= 10 ORDER BY customer_id
ordered: SELECT customer_id FROM orders GROUP BY customer_id HAVING sum(amount) > 5000 ORDER BY customer_id
SELECT customer_id FROM orders GROUP BY customer_id HAVING min(qty) < -8 AND max(qty) > 28
ordered: SELECT tier, count(*) FROM customers GROUP BY tier HAVING avg(score) > 0 ORDER BY tier
ordered: SELECT kind, sum(value) FROM events GROUP BY kind HAVING bool_or(ok) ORDER BY kind
ordered: SELECT kind FROM events GROUP BY kind HAVING count(ok) > 150 ORDER BY kind
ordered: SELECT status, count(*) FROM orders GROUP BY status HAVING count(*) > 1000000 ORDER BY status
ordered: SELECT qty % 3 AS r, count(*) FROM orders GROUP BY 1 HAVING sum(weight) > 100 ORDER BY 1
ordered: SELECT date_trunc('month', created) AS m FROM customers GROUP BY 1 HAVING count(*) > 40 ORDER BY 1
ordered: SELECT status, count(*) FROM orders GROUP BY status HAVING count(*) FILTER (WHERE paid) > 100 ORDER BY status
ordered: SELECT paid, count(*) FROM orders GROUP BY paid HAVING min(placed) < date '2023-01-03' ORDER BY paid
ordered: SELECT country, count(*) FROM customers GROUP BY country HAVING max(name) > 'cust-5' ORDER BY country
SELECT count(*) FROM orders HAVING count(*) > 0
SELECT count(*) FROM orders HAVING count(*) > 10000

-- @distinct
ordered: SELECT DISTINCT status FROM orders ORDER BY status
SELECT DISTINCT status FROM orders
SELECT DISTINCT qty % 5 FROM orders
ordered: SELECT DISTINCT status, paid FROM orders ORDER BY status, paid
ordered: SELECT DISTINCT country FROM customers ORDER BY country NULLS FIRST
ordered: SELECT DISTINCT tier FROM customers ORDER BY tier DESC
ordered: SELECT DISTINCT kind FROM events ORDER BY kind DESC NULLS LAST
ordered: SELECT DISTINCT customer_id FROM orders ORDER BY customer_id LIMIT 20
ordered: SELECT DISTINCT qty FROM orders ORDER BY qty NULLS FIRST LIMIT 5 OFFSET 3
ordered: SELECT DISTINCT placed FROM orders WHERE placed < date '2023-02-01' ORDER BY placed
SELECT DISTINCT vip, tier FROM customers
SELECT DISTINCT note FROM orders WHERE note LIKE 'note-1%'
SELECT DISTINCT lower(status) FROM orders
ordered: SELECT DISTINCT ratio FROM orders WHERE ratio < -20 ORDER BY ratio

-- @filter
-- Aggregates with FILTER (WHERE ...).
SELECT count(*) FILTER (WHERE qty > 0), count(*) FILTER (WHERE qty IS NULL) FROM orders
SELECT sum(amount) FILTER (WHERE status = 'paid'), avg(amount) FILTER (WHERE paid) FROM orders
SELECT min(placed) FILTER (WHERE status = 'new'), max(placed) FILTER (WHERE status = 'new') FROM orders
SELECT bool_and(paid) FILTER (WHERE qty > 25), bool_or(paid) FILTER (WHERE qty < -5) FROM orders
SELECT sum(weight) FILTER (WHERE ratio > 0), avg(ratio) FILTER (WHERE weight < 100) FROM orders
SELECT count(*) FILTER (WHERE false), sum(qty) FILTER (WHERE false), avg(qty) FILTER (WHERE false) FROM orders
ordered: SELECT status, count(*) FILTER (WHERE paid), sum(qty) FILTER (WHERE qty > 10) FROM orders GROUP BY status ORDER BY status
ordered: SELECT tier, count(*) FILTER (WHERE vip), max(created) FILTER (WHERE vip) FROM customers GROUP BY tier ORDER BY tier
ordered: SELECT kind, sum(value) FILTER (WHERE ok), sum(value) FILTER (WHERE NOT ok) FROM events GROUP BY kind ORDER BY kind

-- @nulls
-- NULL sort keys, NULL group keys, aggregates over all-NULL inputs.
SELECT sum(amount), avg(amount), min(amount), max(amount), count(amount), count(*) FROM orders WHERE amount IS NULL
SELECT sum(weight), avg(ratio), min(note), max(placed), bool_and(paid), bool_or(paid) FROM orders WHERE id % 2 = 0 AND weight IS NULL AND ratio IS NULL AND note IS NULL AND placed IS NULL AND paid IS NULL
ordered: SELECT status, sum(amount) FROM orders WHERE amount IS NULL GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT id, status FROM orders WHERE status IS NULL ORDER BY id
ordered: SELECT id, name, country FROM customers WHERE name IS NULL OR country IS NULL ORDER BY country NULLS FIRST, name NULLS FIRST, id
SELECT count(*) FROM orders WHERE status IS NULL
SELECT count(status), count(*) FROM orders
ordered: SELECT kind, count(*), count(kind) FROM events GROUP BY kind ORDER BY kind NULLS FIRST
SELECT max(created), min(created) FROM customers WHERE created IS NULL
SELECT avg(NULL::int), sum(NULL::numeric), count(NULL::text) FROM orders
ordered: SELECT NULL::int AS n, id FROM orders WHERE customer_id = 7 ORDER BY id
ordered: SELECT id, amount FROM orders WHERE customer_id IN (1, 2, 3, 4, 5, 6) ORDER BY amount NULLS FIRST, id
ordered: SELECT id, amount FROM orders WHERE customer_id IN (1, 2, 3, 4, 5, 6) ORDER BY amount DESC NULLS LAST, id

-- @empty
-- Empty tables and filters matching nothing.
SELECT count(*) FROM empty_t
SELECT count(*), count(v), sum(v), avg(v), min(v), max(v) FROM empty_t
SELECT sum(n), avg(n), sum(f), avg(f), min(t), max(d), bool_and(b), bool_or(b) FROM empty_t
SELECT v, count(*) FROM empty_t GROUP BY v
ordered: SELECT * FROM empty_t ORDER BY k
ordered: SELECT k, v FROM empty_t ORDER BY v DESC NULLS FIRST, k LIMIT 10 OFFSET 2
SELECT DISTINCT t FROM empty_t
SELECT * FROM empty_t
SELECT count(*) FROM orders WHERE qty > 1000
SELECT count(*), sum(amount), avg(weight), min(status), max(placed) FROM orders WHERE qty > 1000
SELECT status, count(*) FROM orders WHERE qty > 1000 GROUP BY status
ordered: SELECT id FROM orders WHERE qty > 1000 ORDER BY id LIMIT 5
SELECT count(*) FROM empty_t HAVING count(*) > 0
SELECT count(*) FILTER (WHERE v > 0) FROM empty_t

-- @numeric-scale
-- numeric with mixed scales (price has scales 0-4), int sums/averages with Postgres's result scale.
SELECT sum(price), avg(price), min(price), max(price) FROM orders
ordered: SELECT id, price FROM orders WHERE customer_id IN (11, 12, 13, 14, 15, 16, 17, 18) ORDER BY price NULLS FIRST, id
ordered: SELECT id, price, price * 2 AS p2, price / 3 AS p3, round(price, 1) AS r FROM orders WHERE id % 97 = 0 ORDER BY id
SELECT sum(price * qty), avg(price + amount) FROM orders
ordered: SELECT status, sum(price), avg(price) FROM orders GROUP BY status ORDER BY status
SELECT avg(qty), avg(small), avg(big), avg(customer_id) FROM orders
SELECT avg(amount), avg(amount::numeric(14,4)), sum(amount::numeric(14,4)) FROM orders
SELECT sum(credit), avg(credit), sum(credit * 10) FROM customers
SELECT sum(big), avg(big), max(big), min(big) FROM orders
ordered: SELECT id, big FROM orders WHERE big > 8000000000000000000 ORDER BY id
SELECT sum(big::numeric / 7) FROM orders
SELECT sum(amount), sum(-amount), avg(-amount) FROM orders WHERE amount < 0
ordered: SELECT tier, avg(score), sum(score), avg(tier) FROM customers GROUP BY tier ORDER BY tier
SELECT sum(0.5), sum(1.25::numeric(10,4)), avg(2.000) FROM orders
ordered: SELECT qty, avg(price) FROM orders WHERE qty BETWEEN 0 AND 5 GROUP BY qty ORDER BY qty

-- @join-colocated
-- Joins of customers and orders (both sharded by customer id) on the key.
SELECT c.id, c.name, o.id, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id
SELECT c.id, o.id FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.vip AND o.qty > 20
ordered: SELECT c.id, o.id, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id ORDER BY o.amount DESC NULLS LAST, o.id LIMIT 20
ordered: SELECT c.tier, count(*), sum(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.tier ORDER BY c.tier
ordered: SELECT c.country, count(o.id), avg(o.qty) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.country ORDER BY c.country NULLS FIRST
SELECT c.id, o.id FROM customers c LEFT JOIN orders o ON o.customer_id = c.id WHERE o.id IS NULL
SELECT o.id, c.id FROM orders o LEFT JOIN customers c ON c.id = o.customer_id WHERE c.id IS NULL
SELECT o.id, c.id FROM orders o FULL JOIN customers c ON c.id = o.customer_id WHERE c.id IS NULL OR o.id IS NULL
ordered: SELECT c.id, count(o.id) AS n FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id ORDER BY n DESC, c.id LIMIT 10
SELECT c.id, sum(o.qty) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE false GROUP BY c.id
SELECT count(*) FROM customers c JOIN orders o ON o.customer_id = c.id
SELECT c.vip, bool_and(o.paid), bool_or(o.paid), count(*) FROM customers c JOIN orders o ON c.id = o.customer_id GROUP BY c.vip
ordered: SELECT c.name, o.status, count(*) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.tier = 1 GROUP BY c.name, o.status HAVING count(*) > 1 ORDER BY c.name, o.status
SELECT c.id, o.id FROM customers c, orders o WHERE o.customer_id = c.id AND c.score > 95
ordered: SELECT DISTINCT c.country FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.amount > 1400 ORDER BY c.country

-- @join-reference
-- Joins with the reference table countries.
SELECT c.id, k.name FROM customers c JOIN countries k ON k.code = c.country
ordered: SELECT k.region, count(*) FROM customers c JOIN countries k ON k.code = c.country GROUP BY k.region ORDER BY k.region NULLS FIRST
ordered: SELECT c.id, k.name FROM customers c LEFT JOIN countries k ON k.code = c.country ORDER BY c.id
ordered: SELECT k.name, sum(o.amount), count(*) FROM orders o JOIN customers c ON c.id = o.customer_id JOIN countries k ON k.code = c.country GROUP BY k.name ORDER BY k.name
SELECT o.id, k.region FROM orders o JOIN customers c ON c.id = o.customer_id JOIN countries k ON k.code = c.country WHERE k.region = 'asia' AND o.qty > 25
ordered: SELECT id FROM customers WHERE country IN (SELECT code FROM countries WHERE region = 'eu') ORDER BY id
SELECT count(*) FROM customers c WHERE EXISTS (SELECT 1 FROM countries k WHERE k.code = c.country)
SELECT count(*) FROM customers c WHERE NOT EXISTS (SELECT 1 FROM countries k WHERE k.code = c.country)

-- @reference
-- Reads of the reference table alone (answered by one shard).
ordered: SELECT * FROM countries ORDER BY code
SELECT * FROM countries
ordered: SELECT region, count(*) FROM countries GROUP BY region ORDER BY region NULLS FIRST
SELECT string_agg(code, ',' ORDER BY code) FROM countries
ordered: SELECT code, row_number() OVER (ORDER BY name) FROM countries ORDER BY code

-- @cte-subquery
-- CTEs, derived tables and subqueries that resolve per shard.
ordered: WITH x AS (SELECT * FROM orders WHERE qty > 20) SELECT id, qty FROM x ORDER BY qty DESC, id
WITH x AS (SELECT id, amount FROM orders WHERE status = 'new') SELECT * FROM x
WITH big AS (SELECT * FROM orders WHERE amount > 1000) SELECT count(*), sum(amount) FROM big
ordered: WITH big AS (SELECT * FROM orders WHERE amount > 1000) SELECT customer_id, count(*) FROM big GROUP BY customer_id ORDER BY customer_id
ordered: SELECT s.id, s.total FROM (SELECT id, amount * qty AS total FROM orders WHERE paid) s WHERE s.total > 10000 ORDER BY s.total DESC, s.id
SELECT s.customer_id, s.total FROM (SELECT customer_id, sum(amount) AS total FROM orders GROUP BY customer_id) s WHERE s.total > 3000
ordered: SELECT s.customer_id, s.n FROM (SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id) s ORDER BY s.n DESC, s.customer_id LIMIT 10
ordered: SELECT id, amount FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE vip AND tier = 3) ORDER BY id
SELECT count(*) FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE score > 50)
SELECT count(*) FROM orders WHERE customer_id NOT IN (SELECT id FROM customers)
ordered: SELECT o.id FROM orders o WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id AND c.tier = 4) ORDER BY o.id
SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id)
ordered: SELECT c.id, (SELECT count(*) FROM orders o WHERE o.customer_id = c.id) AS n FROM customers c ORDER BY c.id
ordered: SELECT c.id, c.name FROM customers c WHERE (SELECT sum(amount) FROM orders o WHERE o.customer_id = c.id) > 4000 ORDER BY c.id
ordered: WITH v AS (SELECT id FROM customers WHERE vip) SELECT o.status, count(*) FROM orders o JOIN v ON v.id = o.customer_id GROUP BY o.status ORDER BY o.status
SELECT * FROM (SELECT id, kind FROM events WHERE value > 900000) e
ordered: SELECT e.kind, count(*) FROM (SELECT * FROM events WHERE ok) e GROUP BY e.kind ORDER BY e.kind

-- @keyed
-- A shard key value: the whole statement goes to one shard (anything goes).
ordered: SELECT * FROM orders WHERE customer_id = 7 ORDER BY id
SELECT count(*), sum(amount), avg(qty), min(placed), max(status) FROM orders WHERE customer_id = 7
ordered: SELECT status, count(*) FROM orders WHERE customer_id = 12 GROUP BY status ORDER BY status
ordered: SELECT id, amount FROM orders WHERE customer_id = -3 ORDER BY amount DESC NULLS LAST, id LIMIT 3
SELECT * FROM customers WHERE id = 42
SELECT * FROM customers WHERE id = -7
SELECT * FROM customers WHERE id = 100000
SELECT * FROM events WHERE id = 300
ordered: SELECT c.name, o.id, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.id = 25 ORDER BY o.id
SELECT string_agg(status, ',' ORDER BY id), array_agg(id ORDER BY id) FROM orders WHERE customer_id = 33
ordered: SELECT id, sum(amount) OVER (ORDER BY id) FROM orders WHERE customer_id = 44 ORDER BY id
SELECT count(DISTINCT status) FROM orders WHERE customer_id = 55
ordered: SELECT DISTINCT ON (status) status, id FROM orders WHERE customer_id = 66 ORDER BY status, id
SELECT count(*) FROM orders WHERE customer_id = 9003

-- @in-list
-- IN-lists of keys spanning shards.
SELECT * FROM customers WHERE id IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
ordered: SELECT * FROM customers WHERE id IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10) ORDER BY id
ordered: SELECT id, name FROM customers WHERE id IN (-1, -2, 30, 40, 50) ORDER BY name NULLS FIRST, id
SELECT count(*), sum(credit), avg(score) FROM customers WHERE id IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
ordered: SELECT customer_id, count(*), sum(amount) FROM orders WHERE customer_id IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10) GROUP BY customer_id ORDER BY customer_id
ordered: SELECT id, amount FROM orders WHERE customer_id IN (21, 22, 23, 24, 25) ORDER BY amount, id LIMIT 5
ordered: SELECT id FROM orders WHERE customer_id IN (21, 22, 23, 24, 25) ORDER BY id OFFSET 3
SELECT DISTINCT status FROM orders WHERE customer_id IN (100, 200, 300, 400)
ordered: SELECT status, count(*) FROM orders WHERE customer_id IN (100, 200, 300, 400) GROUP BY status HAVING count(*) > 1 ORDER BY status
SELECT * FROM events WHERE id IN (3, 6, 9, 12, 15, 18, 21)
SELECT count(*) FROM events WHERE id IN (3, 6, 9, 12, 15, 18, 21, 4, 5)
SELECT id FROM customers WHERE id IN (1, 2) OR id = 3
SELECT id FROM customers WHERE id = ANY (ARRAY[5, 6, 7, 8])

-- @dml-returning
-- Broadcast writes, rolled back on both sides.
tx: UPDATE orders SET qty = qty + 1 WHERE status = 'new' RETURNING id, qty
tx: UPDATE orders SET amount = amount * 2 WHERE amount > 1450 RETURNING id, customer_id, amount
tx: DELETE FROM events WHERE kind = 'z' RETURNING id, kind, value
tx: DELETE FROM events WHERE value > 990000 RETURNING *
tx: UPDATE customers SET vip = NOT vip WHERE tier = 2 RETURNING id, vip
tx: UPDATE customers SET name = upper(name) WHERE country = 'jp' RETURNING id, name, country
tx: DELETE FROM orders WHERE qty IS NULL
tx: UPDATE orders SET note = 'x' WHERE small > 990
tx: UPDATE empty_t SET v = 1 RETURNING *
tx: DELETE FROM orders WHERE qty > 1000 RETURNING id
tx: UPDATE orders SET amount = amount + 1 WHERE customer_id = 5 RETURNING id, amount
tx: DELETE FROM customers WHERE id IN (1, 2, 3, 4, 5) RETURNING id, name
tx: UPDATE orders SET price = price * 10 WHERE customer_id IN (SELECT id FROM customers WHERE tier = 0 AND vip) RETURNING id, price
tx: UPDATE countries SET name = upper(name) RETURNING code, name
tx: INSERT INTO orders (id, customer_id, qty, amount) VALUES (5001, 1, 1, 1.5), (5002, 2, 2, 2.25), (5003, 3, 3, NULL), (5004, 4, 4, 4) RETURNING id, customer_id, qty, amount
tx: INSERT INTO events VALUES (90001, 'new', 1, true, NULL), (90002, 'new', 2, false, NULL), (90004, 'new', 3, NULL, NULL)

-- @distinct-aggregates
-- count/sum/avg(DISTINCT x) computed by the shards where that is exact:
-- x is the shard key (its values never repeat across shards, so the
-- shards' distinct counts and sums add up), or the query is grouped by the
-- shard key (each group lives on one shard). Otherwise the shards group
-- by the argument too, sorted by it, and the proxy counts each value once
-- (one DISTINCT argument per query; sum/avg only of integer types).
SELECT count(DISTINCT customer_id) FROM orders
SELECT sum(DISTINCT customer_id) FROM orders
SELECT avg(DISTINCT customer_id) FROM orders
SELECT count(DISTINCT customer_id), sum(DISTINCT customer_id), count(*), sum(qty), min(status) FROM orders
SELECT count(DISTINCT id), sum(DISTINCT id) FROM customers
SELECT count(DISTINCT id), sum(DISTINCT id), avg(DISTINCT id) FROM events WHERE kind IS NULL
SELECT count(DISTINCT customer_id) FROM orders WHERE qty > 1000
SELECT sum(DISTINCT customer_id), avg(DISTINCT customer_id), count(DISTINCT customer_id) FROM orders WHERE qty > 1000
SELECT count(DISTINCT k), sum(DISTINCT k), avg(DISTINCT k) FROM empty_t
SELECT count(DISTINCT customer_id) FROM orders WHERE customer_id >= 9000
SELECT status, count(DISTINCT customer_id) FROM orders GROUP BY status
ordered: SELECT status, count(DISTINCT customer_id) AS n, sum(DISTINCT customer_id) FROM orders GROUP BY status ORDER BY n DESC, status NULLS FIRST
ordered: SELECT paid, count(DISTINCT o.customer_id) FROM orders o GROUP BY paid ORDER BY count(DISTINCT o.customer_id), paid NULLS LAST
ordered: SELECT paid, count(DISTINCT customer_id) FROM orders GROUP BY paid ORDER BY 2 DESC, 1 LIMIT 2
SELECT status FROM orders GROUP BY status HAVING count(DISTINCT customer_id) > 100
ordered: SELECT tier, count(DISTINCT id) FROM customers GROUP BY tier HAVING count(DISTINCT id) BETWEEN 10 AND 200 ORDER BY tier
SELECT c.country, count(DISTINCT o.customer_id) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.country
SELECT c.tier, count(DISTINCT c.id) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id WHERE o.id IS NULL GROUP BY c.tier
SELECT count(DISTINCT o.customer_id), sum(DISTINCT o.customer_id), count(DISTINCT c.id) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id
SELECT k.region, count(DISTINCT c.id) FROM customers c JOIN countries k ON k.code = c.country GROUP BY k.region
SELECT count(DISTINCT customer_id) FROM orders GROUP BY status HAVING count(*) > 1
SELECT customer_id, count(DISTINCT status), sum(DISTINCT qty), avg(DISTINCT qty) FROM orders GROUP BY customer_id
ordered: SELECT customer_id, count(DISTINCT status) AS n FROM orders GROUP BY customer_id ORDER BY n DESC, customer_id LIMIT 10
ordered: SELECT customer_id, sum(DISTINCT amount) FROM orders GROUP BY customer_id ORDER BY sum(DISTINCT amount) DESC NULLS LAST, customer_id LIMIT 15 OFFSET 5
SELECT customer_id FROM orders GROUP BY customer_id HAVING count(DISTINCT status) >= 5
SELECT customer_id, count(DISTINCT qty) FROM orders GROUP BY customer_id HAVING sum(DISTINCT qty) IS NULL OR count(DISTINCT qty) < 2
SELECT customer_id, status, count(DISTINCT qty) FROM orders GROUP BY customer_id, status
SELECT status, customer_id, sum(DISTINCT price), count(*) FROM orders GROUP BY 1, 2
SELECT o.customer_id, count(DISTINCT weight), sum(DISTINCT weight), sum(DISTINCT ratio) FROM orders o GROUP BY 1
SELECT customer_id, count(DISTINCT big), sum(DISTINCT big), sum(DISTINCT small) FROM orders GROUP BY customer_id
SELECT c.id, count(DISTINCT o.status), sum(DISTINCT o.small) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id
ordered: SELECT c.id, c.name, count(DISTINCT o.qty) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.id, c.name ORDER BY 3 DESC, c.id LIMIT 25
SELECT id, count(DISTINCT kind) FROM events GROUP BY id HAVING count(DISTINCT kind) = 0
SELECT k, count(DISTINCT v), sum(DISTINCT n), avg(DISTINCT f) FROM empty_t GROUP BY k
ordered: SELECT customer_id, count(DISTINCT note) FILTER (WHERE paid) FROM orders GROUP BY customer_id ORDER BY customer_id LIMIT 20
ordered: SELECT customer_id, count(DISTINCT lower(status)), count(DISTINCT status) FROM orders WHERE customer_id < 0 OR customer_id > 9000 GROUP BY customer_id ORDER BY customer_id

SELECT count(DISTINCT status) FROM orders
SELECT status, count(DISTINCT qty) FROM orders GROUP BY status
SELECT sum(DISTINCT qty) FROM orders
SELECT count(DISTINCT qty), sum(DISTINCT qty), avg(DISTINCT qty), count(*), count(qty), sum(qty), min(qty), max(status) FROM orders
SELECT count(DISTINCT note), count(note), count(*) FROM orders
SELECT count(DISTINCT lower(status)), count(*) FILTER (WHERE paid) FROM orders
SELECT count(DISTINCT placed), min(placed), max(amount), avg(amount) FROM orders WHERE qty > 10
SELECT count(DISTINCT weight), count(weight), max(ratio) FROM orders WHERE id < 0
SELECT count(DISTINCT ratio) FROM orders WHERE ratio < -20
SELECT count(DISTINCT big), sum(DISTINCT big), avg(DISTINCT big) FROM orders
SELECT sum(DISTINCT small), avg(DISTINCT small), count(DISTINCT small) FROM orders WHERE small < 0
SELECT count(DISTINCT v), sum(DISTINCT v), avg(DISTINCT v), count(*), sum(n) FROM empty_t
SELECT t, count(DISTINCT v), sum(DISTINCT v) FROM empty_t GROUP BY t
SELECT count(DISTINCT qty) FROM orders WHERE qty IS NULL
SELECT sum(DISTINCT qty), avg(DISTINCT qty) FROM orders WHERE qty IS NULL
SELECT count(DISTINCT tier), sum(DISTINCT tier), avg(DISTINCT tier) FROM customers
SELECT sum(DISTINCT score), avg(DISTINCT score), count(DISTINCT score) FROM customers WHERE vip
SELECT count(DISTINCT country) FROM customers
SELECT count(DISTINCT kind), bool_or(ok), bool_and(ok), count(*) FROM events
SELECT count(DISTINCT ok) FROM events WHERE kind IS NOT NULL
SELECT paid, count(DISTINCT status), count(*), sum(amount) FROM orders GROUP BY paid
SELECT status, sum(DISTINCT qty), avg(DISTINCT qty), max(qty) FROM orders GROUP BY status
ordered: SELECT status, count(DISTINCT qty) AS n FROM orders GROUP BY status ORDER BY n DESC, status NULLS FIRST
ordered: SELECT qty % 5 AS m, count(DISTINCT status), sum(qty) FROM orders GROUP BY qty % 5 ORDER BY 2, 1 NULLS LAST
ordered: SELECT tier, count(DISTINCT country) FROM customers GROUP BY tier ORDER BY count(DISTINCT country) DESC, tier LIMIT 3
ordered: SELECT tier, sum(DISTINCT score) FROM customers GROUP BY tier ORDER BY tier LIMIT 5 OFFSET 1
SELECT status FROM orders GROUP BY status HAVING count(DISTINCT qty) > 30
SELECT status, count(*) FROM orders GROUP BY status HAVING count(DISTINCT qty) < 40 OR sum(DISTINCT qty) IS NULL
SELECT paid, count(DISTINCT qty) FROM orders GROUP BY paid HAVING count(*) > 10 AND min(qty) < 0
SELECT count(DISTINCT qty) FROM orders HAVING count(*) > 5
SELECT count(DISTINCT qty) FROM orders WHERE false HAVING count(*) > 5
SELECT qty, count(DISTINCT qty), sum(DISTINCT qty) FROM orders GROUP BY qty
SELECT c.country, count(DISTINCT o.status) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.country
SELECT k.region, count(DISTINCT c.tier), sum(DISTINCT c.tier) FROM customers c LEFT JOIN countries k ON k.code = c.country GROUP BY k.region
ordered: SELECT vip, count(DISTINCT tier) FROM customers GROUP BY vip ORDER BY vip NULLS FIRST

SELECT count(DISTINCT qty) FILTER (WHERE paid) FROM orders
SELECT count(DISTINCT qty) FILTER (WHERE paid), count(DISTINCT qty) FILTER (WHERE NOT paid), count(DISTINCT qty), sum(DISTINCT qty) FILTER (WHERE amount > 0) FROM orders
ordered: SELECT status, count(DISTINCT qty) FILTER (WHERE small > 0), avg(DISTINCT qty) FILTER (WHERE paid IS NULL), count(*) FILTER (WHERE paid) FROM orders GROUP BY status ORDER BY status NULLS FIRST
SELECT tier FROM customers GROUP BY tier HAVING count(DISTINCT country) FILTER (WHERE vip) > 2

-- @gathered-aggregates
-- string_agg / array_agg: with ORDER BY inside the shards also group by its
-- keys and the proxy concatenates in that order; without it only results
-- whose order cannot vary are compared.
SELECT status, string_agg(note, ',' ORDER BY id) FROM orders GROUP BY status
SELECT string_agg(status, ',' ORDER BY id) FROM orders
SELECT array_agg(id ORDER BY id) FROM orders
SELECT customer_id, array_agg(id ORDER BY id) FROM orders GROUP BY customer_id
SELECT array_agg(amount ORDER BY id) FROM orders
-- Results the merge cannot compare (arrays, records as sort or group keys):
-- refused before any row left the proxy, then answered by gathering.
ordered: SELECT status, array_agg(qty ORDER BY id) AS a FROM orders GROUP BY status ORDER BY a, status NULLS FIRST
SELECT DISTINCT array_agg(qty ORDER BY id) FROM orders GROUP BY customer_id
SELECT DISTINCT json_agg(qty ORDER BY id)::text FROM orders GROUP BY customer_id
SELECT string_agg(DISTINCT status, ',' ORDER BY status) FROM orders
SELECT count(DISTINCT (qty, status)) FROM orders
SELECT status, count(DISTINCT qty), sum(DISTINCT small) FROM orders GROUP BY status
SELECT DISTINCT ARRAY[qty, small] FROM orders
ordered: SELECT customer_id, array_agg(qty ORDER BY id) FROM orders GROUP BY customer_id ORDER BY 2, 1 LIMIT 10
SELECT DISTINCT row(qty, status)::text FROM orders
SELECT array_agg(id ORDER BY id DESC) FROM orders WHERE qty > 20
ordered: SELECT status, string_agg(note, '; ' ORDER BY id) FROM orders GROUP BY status ORDER BY status
ordered: SELECT status, array_agg(note ORDER BY id), count(*), sum(qty) FROM orders GROUP BY status ORDER BY status
ordered: SELECT paid, string_agg(id::text, ',' ORDER BY id) FILTER (WHERE qty > 10), array_agg(price ORDER BY id) FILTER (WHERE price < 0) FROM orders GROUP BY paid ORDER BY paid
SELECT string_agg(name, ',' ORDER BY id) FROM customers WHERE false
SELECT array_agg(id ORDER BY id), string_agg(kind, '|' ORDER BY id), count(*) FROM events WHERE value < -1000000000000
ordered: SELECT country, string_agg(name, ',' ORDER BY score DESC NULLS LAST, id) FROM customers GROUP BY country ORDER BY country
ordered: SELECT country, array_agg(score ORDER BY score NULLS FIRST, id DESC) FROM customers GROUP BY country ORDER BY country
SELECT array_agg(note ORDER BY id), array_agg(status ORDER BY id) FROM orders WHERE id < 300
SELECT array_agg(status ORDER BY status, id) FROM orders WHERE id % 7 = 0
SELECT string_agg(status, NULL ORDER BY id) FROM orders WHERE id < 50
SELECT array_agg(weight ORDER BY id), array_agg(ratio ORDER BY id), array_agg(big ORDER BY id) FROM orders WHERE id < 40
SELECT array_agg(placed ORDER BY id), array_agg(paid ORDER BY id), array_agg(small ORDER BY id) FROM orders WHERE customer_id < 40
SELECT array_agg(created ORDER BY id), array_agg(credit ORDER BY id), array_agg(vip ORDER BY id) FROM customers WHERE id < 60
ordered: SELECT status, string_agg(note, ',' ORDER BY id) FROM orders GROUP BY status HAVING count(*) > 100 ORDER BY status
ordered: SELECT status, string_agg(note, ',' ORDER BY id) AS s FROM orders GROUP BY status ORDER BY count(*) DESC, status
ordered: SELECT status, array_agg(id ORDER BY id) FROM orders GROUP BY status ORDER BY status LIMIT 2 OFFSET 1
ordered: SELECT status, string_agg(status, ',' ORDER BY id) FROM orders WHERE qty > 45 GROUP BY status HAVING string_agg(status, ',' ORDER BY id) > 'p' ORDER BY status
SELECT customer_id, string_agg(status, ',' ORDER BY id), array_agg(qty ORDER BY id) FROM orders WHERE customer_id < 50 GROUP BY customer_id
SELECT array_agg(c.name ORDER BY o.id) FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.qty = 5
SELECT string_agg(kind, ',' ORDER BY value DESC, id), array_agg(ok ORDER BY value DESC, id) FROM events WHERE id < 300
SELECT min(id), max(amount), avg(qty), string_agg(note, ',' ORDER BY id) FILTER (WHERE paid), array_agg(id ORDER BY id) FILTER (WHERE paid IS NULL) FROM orders
SELECT array_agg(amount ORDER BY amount NULLS FIRST, id) FROM orders WHERE id < 200
ordered: SELECT placed, array_agg(id ORDER BY id) FROM orders WHERE placed IS NOT NULL GROUP BY placed ORDER BY placed LIMIT 20
SELECT id, string_agg(status, ','), array_agg(qty) FROM orders WHERE id < 400 GROUP BY id
SELECT customer_id, string_agg(status, ','), array_agg(id) FROM orders WHERE customer_id BETWEEN 10 AND 12 AND qty = 3 GROUP BY customer_id
SELECT string_agg(status, ',') FROM orders WHERE id = 17
SELECT array_agg(x ORDER BY x) FROM (SELECT qty AS x FROM orders WHERE id < 100) s
SELECT json_agg(id ORDER BY id) FROM orders
SELECT jsonb_agg(note ORDER BY id), json_agg(note ORDER BY id) FROM orders WHERE id < 300
ordered: SELECT status, json_agg(amount ORDER BY id), jsonb_agg(placed ORDER BY id) FILTER (WHERE paid) FROM orders GROUP BY status ORDER BY status
SELECT jsonb_agg(c ORDER BY c.id) FROM customers c WHERE id < 40
SELECT json_agg(weight ORDER BY id), jsonb_agg(ratio ORDER BY id), json_agg(paid ORDER BY id), jsonb_agg(big ORDER BY id) FROM orders WHERE id < 100
SELECT customer_id, json_agg(c ORDER BY id) FROM orders c WHERE customer_id < 20 GROUP BY customer_id
SELECT json_agg(name ORDER BY id) FROM customers WHERE false
refuse: SELECT json_agg(c ORDER BY c.id) FROM customers c
refuse: SELECT json_agg(ARRAY[id, qty] ORDER BY id) FROM orders
SELECT array_agg(note ORDER BY id), jsonb_agg(note ORDER BY id), string_agg(note, ',' ORDER BY id) FROM orders WHERE note IS NULL AND id < 400
ordered: SELECT status, array_agg(DISTINCT paid), count(*) FROM orders WHERE customer_id = 42 GROUP BY status ORDER BY status
ordered: SELECT c.country, string_agg(o.status, '/' ORDER BY o.id), sum(o.qty), avg(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.id < 500 GROUP BY c.country ORDER BY c.country
ordered: SELECT kind, array_agg(at ORDER BY at DESC NULLS LAST, id) FROM events WHERE id < 0 GROUP BY kind ORDER BY kind
ordered: SELECT status, string_agg(note, ',' ORDER BY placed, id) FROM orders GROUP BY status ORDER BY max(qty), status LIMIT 3
refuse: SELECT string_agg(DISTINCT status, ',' ORDER BY status) FROM orders
refuse: SELECT string_agg(status, note ORDER BY id) FROM orders
refuse: SELECT string_agg(status, ',' ORDER BY status COLLATE "C", id) FROM orders
SELECT string_agg(status, ',' ORDER BY id), array_agg(id ORDER BY qty, id DESC), json_agg(note ORDER BY note NULLS FIRST, id) FROM orders
ordered: SELECT paid, array_agg(id ORDER BY amount DESC NULLS LAST, id), string_agg(note, ',' ORDER BY placed, id) FILTER (WHERE qty < 30) FROM orders GROUP BY paid ORDER BY paid
SELECT count(DISTINCT qty), string_agg(status, ',' ORDER BY id) FROM orders
ordered: SELECT status, count(DISTINCT qty), sum(DISTINCT qty), array_agg(id ORDER BY id) FILTER (WHERE qty > 40), count(*) FROM orders GROUP BY status ORDER BY status
refuse: SELECT count(DISTINCT customer_id), string_agg(status, ',' ORDER BY id) FROM orders
refuse: SELECT 'x', array_agg(id ORDER BY id) FROM orders

-- @statistics
-- variance/stddev: exact numeric over integers and numeric, float8 over floats.
SELECT stddev(amount) FROM orders
SELECT variance(qty) FROM orders
SELECT stddev(amount), variance(amount), stddev_pop(amount), var_pop(amount), stddev_samp(amount), var_samp(amount) FROM orders
SELECT stddev(qty), variance(qty), var_pop(small), stddev_pop(small), var_samp(small) FROM orders
SELECT variance(big), stddev(big), var_pop(big), stddev_pop(big) FROM orders
SELECT stddev(price), var_samp(price), stddev_pop(price), var_pop(price) FROM orders
SELECT stddev(weight), variance(weight), var_pop(ratio), stddev_pop(ratio), stddev(ratio), var_samp(weight) FROM orders
ordered: SELECT status, stddev(amount), var_pop(qty), variance(weight), stddev_pop(price) FROM orders GROUP BY status ORDER BY status
SELECT customer_id, variance(amount), stddev(qty), stddev_pop(price), var_pop(weight) FROM orders GROUP BY customer_id
SELECT stddev(amount), variance(qty), stddev(weight) FROM orders WHERE id = 5
SELECT stddev_pop(amount), var_pop(qty), var_pop(weight) FROM orders WHERE id = 5
SELECT variance(value), stddev(value), stddev_pop(value) FROM events
SELECT variance(score), stddev(tier), stddev(credit), var_pop(credit) FROM customers
SELECT stddev(amount) FILTER (WHERE paid), variance(qty) FILTER (WHERE qty > 10), var_pop(price) FILTER (WHERE price < 0) FROM orders
SELECT stddev(n), variance(v), var_pop(f), stddev_pop(k) FROM empty_t
ordered: SELECT paid, stddev(price) FROM orders GROUP BY paid HAVING variance(qty) > 10 ORDER BY stddev(price)
SELECT variance(amount), stddev_pop(amount) FROM orders WHERE amount IS NULL
SELECT variance(qty * 0), stddev(qty * 0), stddev(1), var_pop(2.50) FROM orders
ordered: SELECT country, stddev(score), variance(credit), stddev_pop(tier) FROM customers GROUP BY country ORDER BY country
ordered: SELECT status, variance(-qty * 1000000), stddev(amount * 1000000000) FROM orders GROUP BY status ORDER BY status
ordered: SELECT tier, stddev(price), variance(price), count(*) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY tier ORDER BY tier
ordered: SELECT kind, stddev(value), var_pop(value) FROM events GROUP BY kind ORDER BY variance(value) DESC NULLS LAST, kind
SELECT stddev(amount::float8), variance(qty::float4), stddev(price::float8) FROM orders
refuse: SELECT stddev(DISTINCT qty) FROM orders

-- @ordered-set
-- percentile_cont/percentile_disc/mode() WITHIN GROUP (ORDER BY x): the shards
-- also group by x and send count(x) per value; the proxy picks from the merged
-- sorted values.
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY weight) FROM orders
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) FROM orders
SELECT percentile_cont(0) WITHIN GROUP (ORDER BY qty), percentile_cont(1) WITHIN GROUP (ORDER BY qty), percentile_cont(0.25) WITHIN GROUP (ORDER BY qty) FROM orders
SELECT percentile_cont(0.37) WITHIN GROUP (ORDER BY big), percentile_cont(0.9) WITHIN GROUP (ORDER BY small DESC) FROM orders
SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY amount) FROM orders
SELECT percentile_disc(0) WITHIN GROUP (ORDER BY qty), percentile_disc(1) WITHIN GROUP (ORDER BY qty), percentile_disc(0.333) WITHIN GROUP (ORDER BY price) FROM orders
SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY status), percentile_disc(0.5) WITHIN GROUP (ORDER BY placed) FROM orders
SELECT percentile_disc(0.75) WITHIN GROUP (ORDER BY weight DESC), percentile_disc(0.1) WITHIN GROUP (ORDER BY ratio) FROM orders
SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY note NULLS FIRST) FROM orders
SELECT mode() WITHIN GROUP (ORDER BY status) FROM orders
SELECT mode() WITHIN GROUP (ORDER BY qty), mode() WITHIN GROUP (ORDER BY qty DESC), mode() WITHIN GROUP (ORDER BY paid) FROM orders
SELECT mode() WITHIN GROUP (ORDER BY kind), mode() WITHIN GROUP (ORDER BY ok) FROM events
SELECT mode() WITHIN GROUP (ORDER BY country), mode() WITHIN GROUP (ORDER BY tier DESC) FROM customers
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY qty), mode() WITHIN GROUP (ORDER BY qty) FROM orders WHERE id = 5
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY qty), percentile_disc(0.5) WITHIN GROUP (ORDER BY qty), mode() WITHIN GROUP (ORDER BY qty) FROM orders WHERE qty IS NULL
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY f), percentile_disc(0.5) WITHIN GROUP (ORDER BY t), mode() WITHIN GROUP (ORDER BY v) FROM empty_t
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY qty) FILTER (WHERE paid), mode() WITHIN GROUP (ORDER BY status) FILTER (WHERE qty > 40) FROM orders
ordered: SELECT status, percentile_cont(0.5) WITHIN GROUP (ORDER BY amount), percentile_disc(0.9) WITHIN GROUP (ORDER BY qty), mode() WITHIN GROUP (ORDER BY small) FROM orders GROUP BY status ORDER BY status
SELECT customer_id, percentile_disc(0.5) WITHIN GROUP (ORDER BY qty), mode() WITHIN GROUP (ORDER BY status) FROM orders GROUP BY customer_id
ordered: SELECT paid, percentile_cont(0.5) WITHIN GROUP (ORDER BY weight), count(*), sum(qty) FROM orders GROUP BY paid ORDER BY paid
ordered: SELECT status, mode() WITHIN GROUP (ORDER BY qty) FROM orders GROUP BY status HAVING percentile_cont(0.5) WITHIN GROUP (ORDER BY qty) > 20 ORDER BY status
ordered: SELECT status, percentile_disc(0.5) WITHIN GROUP (ORDER BY amount) FROM orders GROUP BY status ORDER BY percentile_disc(0.5) WITHIN GROUP (ORDER BY amount) DESC NULLS LAST, status LIMIT 3
ordered: SELECT kind, percentile_cont(0.5) WITHIN GROUP (ORDER BY value), mode() WITHIN GROUP (ORDER BY value) FROM events GROUP BY kind ORDER BY kind
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY -qty::int8 * 1000000000), percentile_disc(0.5) WITHIN GROUP (ORDER BY -big) FROM orders
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY qty) + 1, mode() WITHIN GROUP (ORDER BY qty) * 2 FROM orders
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY weight), string_agg(status, ',' ORDER BY id) FROM orders WHERE id < 50
ordered: SELECT tier, percentile_cont(0.5) WITHIN GROUP (ORDER BY o.amount), mode() WITHIN GROUP (ORDER BY o.status) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY tier ORDER BY tier
refuse: SELECT percentile_cont(ARRAY[0.25, 0.5]) WITHIN GROUP (ORDER BY qty) FROM orders
refuse: SELECT percentile_cont(abs(qty) / 100000.0) WITHIN GROUP (ORDER BY qty) FROM orders GROUP BY qty
refuse: SELECT 'x', mode() WITHIN GROUP (ORDER BY status) FROM orders
refuse: SELECT rank(10) WITHIN GROUP (ORDER BY qty), cume_dist(10) WITHIN GROUP (ORDER BY qty) FROM orders
SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY qty), percentile_cont(1) WITHIN GROUP (ORDER BY weight), mode() WITHIN GROUP (ORDER BY big) FROM orders WHERE customer_id = 42
ordered: SELECT customer_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY qty), mode() WITHIN GROUP (ORDER BY status DESC) FROM orders WHERE customer_id < 30 GROUP BY customer_id ORDER BY customer_id
SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY score), percentile_cont(0.5) WITHIN GROUP (ORDER BY credit), mode() WITHIN GROUP (ORDER BY created) FROM customers

-- @regression
-- Two-variable statistics (corr, covar_*, regr_*) combined from the shards'
-- (N, Sx, Sxx, Sy, Syy, Sxy) as float8_regr_combine does; bit_and/bit_or/bit_xor
-- over integers.
SELECT corr(weight, qty) FROM orders
SELECT covar_pop(weight, qty), covar_samp(weight, qty) FROM orders
SELECT regr_count(weight, qty), regr_sxx(weight, qty), regr_syy(weight, qty), regr_sxy(weight, qty) FROM orders
SELECT regr_avgx(weight, qty), regr_avgy(weight, qty) FROM orders
SELECT regr_slope(weight, qty), regr_intercept(weight, qty), regr_r2(weight, qty) FROM orders
SELECT corr(amount, price), regr_slope(amount, price), regr_intercept(amount, price) FROM orders
SELECT corr(ratio, small), covar_pop(ratio, small), regr_r2(ratio, small) FROM orders
SELECT corr(big, qty), covar_samp(big, qty), regr_sxx(qty, big), regr_avgy(big, qty) FROM orders
SELECT corr(-qty * 1000000, weight), regr_slope(-weight, qty * 1e9) FROM orders
SELECT corr(qty, qty), regr_r2(qty, qty), regr_slope(qty, qty) FROM orders
SELECT corr(qty * 0, weight), regr_r2(qty * 0, weight), regr_slope(weight, qty * 0), regr_intercept(weight, qty * 0) FROM orders
SELECT corr(weight, qty), regr_count(weight, qty), covar_samp(weight, qty) FROM orders WHERE id = 5
SELECT corr(weight, qty), regr_count(weight, qty), covar_pop(weight, qty), regr_avgx(weight, qty) FROM orders WHERE weight IS NULL
SELECT regr_count(f, v), corr(f, v), regr_sxx(f, v), covar_pop(f, n), regr_avgy(f, k) FROM empty_t
SELECT corr(weight, qty) FILTER (WHERE paid), regr_slope(weight, qty) FILTER (WHERE qty > 10), regr_count(amount, qty) FILTER (WHERE price < 0) FROM orders
ordered: SELECT status, corr(weight, qty), covar_samp(amount, small), regr_count(weight, ratio) FROM orders GROUP BY status ORDER BY status
SELECT customer_id, regr_count(weight, qty), covar_pop(weight, qty), regr_sxy(weight, qty), regr_avgx(weight, qty) FROM orders GROUP BY customer_id
ordered: SELECT paid, regr_slope(amount, qty), regr_intercept(amount, qty) FROM orders GROUP BY paid ORDER BY paid
ordered: SELECT status, regr_r2(weight, qty) FROM orders GROUP BY status HAVING regr_count(weight, qty) > 100 ORDER BY regr_r2(weight, qty) DESC NULLS LAST, status
ordered: SELECT status, corr(weight, qty) FROM orders GROUP BY status ORDER BY corr(weight, qty) NULLS FIRST, status LIMIT 3
ordered: SELECT tier, corr(score, credit), covar_pop(score, tier), regr_count(credit, score) FROM customers GROUP BY tier ORDER BY tier
ordered: SELECT kind, corr(value, id), regr_slope(value, id) FROM events GROUP BY kind ORDER BY kind
SELECT corr(value, id), covar_samp(value, id), regr_sxx(value, id), regr_syy(value, id) FROM events
SELECT regr_count(weight, qty) + 1, corr(weight, qty) * 2 FROM orders
ordered: SELECT tier, corr(o.weight, o.qty), regr_avgx(o.amount, o.qty) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY tier ORDER BY tier
SELECT corr(weight, qty), stddev(weight), sum(qty), count(*) FROM orders
SELECT corr(weight, qty), count(DISTINCT qty) FROM orders
SELECT corr(weight, qty ORDER BY id) FROM orders
SELECT covar_samp(weight, qty) FROM orders WHERE customer_id = 42
refuse: SELECT corr(DISTINCT weight, qty) FROM orders
SELECT bit_and(qty), bit_or(qty), bit_xor(qty) FROM orders
SELECT bit_and(small), bit_or(small), bit_xor(small) FROM orders
SELECT bit_and(big), bit_or(big), bit_xor(big) FROM orders
SELECT bit_and(value), bit_or(value), bit_xor(value) FROM events
SELECT bit_and(v), bit_or(v), bit_xor(k) FROM empty_t
SELECT bit_xor(qty), bit_or(small) FROM orders WHERE qty IS NULL
ordered: SELECT status, bit_and(qty), bit_or(small), bit_xor(big) FROM orders GROUP BY status ORDER BY status
SELECT customer_id, bit_xor(qty), bit_and(id) FROM orders GROUP BY customer_id
SELECT bit_or(qty) FILTER (WHERE paid), bit_xor(small) FILTER (WHERE qty > 10) FROM orders
ordered: SELECT paid, bit_xor(qty) FROM orders GROUP BY paid HAVING bit_or(qty) > 0 ORDER BY bit_xor(qty), paid
SELECT bit_and(DISTINCT qty), bit_or(DISTINCT small) FROM orders
refuse: SELECT bit_xor(DISTINCT qty) FROM orders
refuse: SELECT bit_and(qty::bit(8)), bit_or(small::int4::bit(16)) FROM orders
refuse: SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY (placed - date '2023-01-01') * interval '1 day') FROM orders
SELECT every(paid), every(qty > 0) FROM orders
ordered: SELECT status, every(paid), bool_or(paid) FROM orders GROUP BY status ORDER BY status
ordered: SELECT score, bit_or(tier), bit_and(tier::int2), every(vip) FROM customers GROUP BY score ORDER BY score NULLS FIRST LIMIT 10

-- @refuse
-- Cannot be answered exactly by merging per-shard results: must be 0A000
-- (an exact answer is also accepted).
refuse: SELECT count(DISTINCT qty), count(DISTINCT status) FROM orders
refuse: SELECT count(DISTINCT qty), count(DISTINCT customer_id) FROM orders
refuse: SELECT status, count(DISTINCT customer_id), count(DISTINCT qty) FROM orders GROUP BY status ORDER BY status LIMIT 4
refuse: SELECT status, count(DISTINCT qty) FROM orders GROUP BY status HAVING count(DISTINCT paid) > 1
refuse: SELECT sum(DISTINCT amount) FROM orders
refuse: SELECT status, avg(DISTINCT weight) FROM orders GROUP BY status
refuse: SELECT 'x', count(DISTINCT qty) FROM orders
SELECT id, row_number() OVER (ORDER BY id) FROM orders
refuse: SELECT id, sum(amount) OVER (PARTITION BY status ORDER BY id) FROM orders
SELECT id, rank() OVER (ORDER BY amount) FROM orders
SELECT customer_id, count(*) OVER () FROM orders
refuse: SELECT o.id, e.kind FROM orders o JOIN events e ON e.id = o.id
refuse: SELECT count(*) FROM orders o JOIN events e ON e.id = o.id
refuse: SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.id
refuse: SELECT a.id, b.id FROM customers a JOIN customers b ON a.name = b.name
refuse: SELECT count(*) FROM orders a JOIN orders b ON a.id = b.id
refuse: SELECT c.id, o.id FROM customers c JOIN orders o ON o.qty = c.tier
refuse: SELECT id FROM orders WHERE id IN (SELECT id FROM events)
refuse: SELECT count(*) FROM customers c WHERE c.name IN (SELECT status FROM orders)
refuse: SELECT status, count(*) FROM orders GROUP BY ROLLUP (status)
refuse: SELECT status, paid, count(*) FROM orders GROUP BY GROUPING SETS ((status), (paid))
SELECT id FROM orders WHERE qty > (SELECT avg(qty) FROM orders)
refuse: SELECT k.code, count(c.id) FROM countries k LEFT JOIN customers c ON c.country = k.code GROUP BY k.code
refuse: SELECT k.code, c.id FROM countries k LEFT JOIN customers c ON c.country = k.code
refuse: SELECT id FROM orders ORDER BY id FETCH FIRST 5 ROWS WITH TIES

-- @random-regressions
-- Wrong answers found by the random generator (tests/oracle/generator.rs),
-- smallest forms.
-- ORDER BY a bare name sorts by the output column Postgres gives that name
-- (a cast's column, a function's, a CASE's ELSE branch's), not the input
-- column (these sorted by the input column, or failed with 42703).
ordered: SELECT qty::text FROM orders ORDER BY qty, id LIMIT 20
ordered: SELECT qty::text, count(*) FROM orders GROUP BY qty ORDER BY qty
ordered: SELECT CASE WHEN paid THEN -qty ELSE qty END FROM orders ORDER BY qty, id LIMIT 30
ordered: SELECT DISTINCT floor(weight / 1000) FROM orders ORDER BY floor DESC NULLS LAST
ordered: SELECT DISTINCT substr(status, 1, 3) FROM orders ORDER BY substr
ordered: SELECT extract(month FROM placed), id FROM orders ORDER BY extract, id LIMIT 10
-- GROUP BY a name that is an input column and another item's alias groups
-- by the column (these grouped by the aliased expression).
SELECT qty % 3 AS qty, count(*) FROM orders GROUP BY qty
SELECT upper(status) AS status, count(*) FROM orders GROUP BY status
SELECT status AS qty, count(*) FROM orders GROUP BY status, qty
SELECT id % 5 AS tier, count(*), max(score) FROM customers GROUP BY tier, id % 5
-- A quoted literal in HAVING has the other side's type in Postgres (these
-- compared it as text with a timestamp or a count).
SELECT c.tier, count(*) FROM customers c GROUP BY c.tier HAVING min(c.created) < '2023-01-05'
SELECT status, count(*) FROM orders GROUP BY status HAVING count(*) > '400'
ordered: SELECT c.tier, count(*) FROM customers c GROUP BY c.tier HAVING min(c.created) < timestamp '2023-01-05' ORDER BY c.tier
-- A literal that is no bigint compared with a bigint shard key is compared
-- as numeric by the server (these failed with 22P02 at the proxy).
SELECT id FROM orders WHERE customer_id = 5.0
SELECT id FROM orders WHERE customer_id IN (5.0, 6)
SELECT id FROM orders WHERE customer_id = 1e1
SELECT count(*) FROM orders WHERE customer_id = 5.5

-- @expr-over-aggregates
-- Expressions over combined aggregates, evaluated at the proxy in the type
-- Postgres resolves (probed from the shards): integer division truncates,
-- numeric keeps its scale, overflow and division by zero fail the same way.
SELECT count(status), count(*) - count(status) FROM orders
SELECT sum(qty) * 2 FROM orders
SELECT sum(amount) / count(*) FROM orders
SELECT coalesce(sum(amount), 0) FROM orders WHERE qty > 1000
ordered: SELECT status, max(qty) - min(qty) FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, sum(qty) / count(*), sum(qty) % 7 FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, round(avg(amount), 2), round(avg(amount)), trunc(avg(amount), 1) FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, avg(qty)::int, avg(amount)::numeric(10,1), sum(amount)::int8 FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, ceil(avg(weight)), floor(avg(weight)), round(avg(weight)) FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, ceil(avg(amount)), floor(avg(amount)), abs(min(amount)) FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, sum(weight) / count(*), avg(weight) * 2, sum(ratio) + 1 FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, sum(amount) * 1.5, sum(amount) + sum(price), sum(price) - sum(amount) FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, sum(amount) / sum(qty), sum(qty)::numeric / count(*) FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, min(small) + max(small), max(small) * 2, -min(small) FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, count(*) * 100 / (SELECT 1) FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, CASE WHEN count(*) > 500 THEN 'big' WHEN count(*) > 100 THEN 'mid' ELSE 'small' END FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, CASE count(*) % 3 WHEN 0 THEN 'zero' WHEN 1 THEN 'one' END AS r FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, CASE WHEN bool_or(paid) THEN sum(qty) ELSE -sum(qty) END FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, coalesce(max(note), 'none'), coalesce(min(amount), -1), nullif(count(*), 600) FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, greatest(max(qty), 5, sum(small)), least(min(qty), 2) FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, 'n=' || count(*), max(status) || '/' || min(note) FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, count(*)::text, sum(amount)::text, max(weight)::text, bool_and(paid)::text FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, count(*) > 500, sum(qty) BETWEEN 1000 AND 5000, max(qty) IN (1, 9, 10) FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, max(amount) IS NULL, bool_or(paid) IS NOT TRUE, bool_and(paid) IS DISTINCT FROM bool_or(paid) FROM orders GROUP BY status ORDER BY status NULLS FIRST
ordered: SELECT status, sum(qty) FROM orders GROUP BY status HAVING sum(qty) * 2 > 3000 ORDER BY status NULLS FIRST
ordered: SELECT status, count(*) FROM orders GROUP BY status HAVING count(*) - count(paid) > 10 OR max(qty) / 2 = 5 ORDER BY status NULLS FIRST
ordered: SELECT status, count(*) FROM orders GROUP BY status HAVING coalesce(max(note), '') <> '' AND NOT bool_and(paid) ORDER BY status NULLS FIRST
ordered: SELECT status, count(*) FROM orders GROUP BY status HAVING avg(amount)::int > 400 ORDER BY status NULLS FIRST
ordered: SELECT status, count(*) FROM orders GROUP BY status HAVING max(placed) > '2023-06-01' ORDER BY status NULLS FIRST
ordered: SELECT status, sum(qty) - sum(small) AS d FROM orders GROUP BY status ORDER BY d DESC NULLS LAST, status
ordered: SELECT status, count(*) FROM orders GROUP BY status ORDER BY count(*) * -1, status NULLS FIRST
ordered: SELECT status FROM orders GROUP BY status ORDER BY round(avg(amount), 1) NULLS FIRST, status NULLS FIRST
ordered: SELECT status, sum(amount) / count(*) FROM orders GROUP BY status ORDER BY 2 DESC NULLS LAST, 1 LIMIT 3
ordered: SELECT qty % 4 AS b, max(qty) - (qty % 4) FROM orders GROUP BY qty % 4 ORDER BY b NULLS FIRST
ordered: SELECT c.tier, max(c.score) * c.tier, count(*) + c.tier FROM customers c GROUP BY c.tier ORDER BY c.tier
ordered: SELECT c.vip, sum(c.credit) / count(c.credit), round(avg(c.credit), 4), max(c.credit) - min(c.credit) FROM customers c GROUP BY c.vip ORDER BY c.vip NULLS FIRST
ordered: SELECT c.tier, count(*) FROM customers c GROUP BY c.tier HAVING min(c.created) < '2023-01-05 12:00' ORDER BY c.tier
ordered: SELECT kind, sum(value) / 1000, max(value) - min(value), count(ok) FILTER (WHERE ok) * 1.0 / count(*) FROM events GROUP BY kind ORDER BY kind NULLS FIRST
SELECT sum(qty) * 2, sum(amount) / count(*), coalesce(max(note), 'x') FROM orders WHERE false
SELECT coalesce(sum(v), 0), count(*) * 2, coalesce(max(t), 'none'), sum(n) / nullif(count(*), 0) FROM empty_t
SELECT count(*) / 7, count(*) % 7, count(*)::float8 / 7, count(*)::numeric / 7 FROM orders
SELECT max(qty) + 2147483000, min(small) - 30000 FROM orders
SELECT sum(amount)::numeric(14,1), avg(price)::numeric(20,6), (max(weight) / 3)::numeric FROM orders
SELECT avg(ratio)::real, sum(ratio) * 2, max(ratio) / 3 FROM orders
SELECT count(*) FILTER (WHERE paid) * 100 / count(*), sum(qty) FILTER (WHERE status = 'new') - 1 FROM orders
SELECT CASE WHEN count(*) = 0 THEN NULL ELSE sum(qty) END, CASE WHEN sum(qty) IS NULL THEN 0 END FROM orders
SELECT (count(*) + 1)::int, sum(qty)::int8 / 3, -(sum(qty)) FROM orders
SELECT abs(sum(qty) - 100000), greatest(sum(qty), count(*)), least(avg(qty), 1) FROM orders
SELECT round(sum(amount), -2), round(avg(amount), 10), trunc(sum(price), 2) FROM orders
SELECT sum(qty) + 0.5, sum(qty) * 0.1, sum(big::numeric) / 1000000000000 FROM orders
error: SELECT sum(qty) / (count(*) - count(*)) FROM orders
error: SELECT max(qty) / 0 FROM orders
error: SELECT sum(weight) / (count(*) - count(*)) FROM orders
error: SELECT (max(qty) + 2147483000)::int2 FROM orders
error: SELECT max(qty) * 2147483647 FROM orders
error: SELECT max(big) + max(big) FROM orders
error: SELECT status, max(qty) / (min(qty) - min(qty)) FROM orders GROUP BY status
error: SELECT avg(amount)::numeric(3,1) FROM orders
error: SELECT status FROM orders GROUP BY status HAVING count(*) > ('lo' || 'ts')::int8
refuse: SELECT status, upper(max(status)) FROM orders GROUP BY status
refuse: SELECT max(placed) + 1 FROM orders
refuse: SELECT max(at) - min(at) FROM events

-- @distinct-on
-- DISTINCT ON: each shard keeps its first row per key, the merge keeps the
-- first over all shards (ties broken by a unique column so the answer is
-- one).
ordered: SELECT DISTINCT ON (status) status, id FROM orders ORDER BY status, id
ordered: SELECT DISTINCT ON (tier) tier, name FROM customers ORDER BY tier, id
ordered: SELECT DISTINCT ON (status) status, id, amount FROM orders ORDER BY status NULLS FIRST, amount DESC NULLS LAST, id
ordered: SELECT DISTINCT ON (customer_id) customer_id, id, placed FROM orders ORDER BY customer_id, placed DESC NULLS LAST, id LIMIT 25
ordered: SELECT DISTINCT ON (customer_id) customer_id, id FROM orders ORDER BY customer_id, id OFFSET 490
ordered: SELECT DISTINCT ON (qty, paid) qty, paid, id FROM orders ORDER BY qty NULLS FIRST, paid, id
ordered: SELECT DISTINCT ON (paid, qty) qty, paid, id FROM orders ORDER BY qty DESC, paid DESC, id DESC
ordered: SELECT DISTINCT ON (lower(status)) lower(status), id FROM orders ORDER BY lower(status), id
ordered: SELECT DISTINCT ON (1) status, id FROM orders ORDER BY 1, 2 DESC
ordered: SELECT DISTINCT ON (s) status AS s, id FROM orders ORDER BY s, id
ordered: SELECT DISTINCT ON (c.tier) c.tier, c.id, c.credit FROM customers c WHERE c.vip ORDER BY c.tier, c.credit NULLS LAST, c.id
ordered: SELECT DISTINCT ON (kind) kind, value, id FROM events ORDER BY kind, value DESC NULLS LAST, id
ordered: SELECT DISTINCT ON (o.status) o.status, c.name, o.id FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY o.status, o.id
ordered: SELECT DISTINCT ON (k) k, v FROM empty_t ORDER BY k, v
SELECT DISTINCT ON (status) status FROM orders
SELECT DISTINCT ON (qty % 3) qty % 3 FROM orders
error: SELECT DISTINCT ON (status, paid) status, paid, id FROM orders ORDER BY status, id
ordered: SELECT DISTINCT ON (status, paid) status, paid FROM orders ORDER BY status

-- @window-pushdown
-- Window functions partitioned by the shard key: each partition lives on
-- one shard, which computes the window; the rows merge as any others.
ordered: SELECT customer_id, id, row_number() OVER (PARTITION BY customer_id ORDER BY id) FROM orders ORDER BY customer_id, id
ordered: SELECT customer_id, id, rank() OVER (PARTITION BY customer_id ORDER BY qty NULLS FIRST), dense_rank() OVER (PARTITION BY customer_id ORDER BY qty NULLS FIRST) FROM orders ORDER BY customer_id, id LIMIT 200
ordered: SELECT customer_id, id, sum(amount) OVER (PARTITION BY customer_id ORDER BY id), count(*) OVER (PARTITION BY customer_id) FROM orders ORDER BY customer_id, id LIMIT 300
ordered: SELECT customer_id, id, lag(amount) OVER w, lead(amount, 2) OVER w, first_value(id) OVER w FROM orders WINDOW w AS (PARTITION BY customer_id ORDER BY id) ORDER BY customer_id, id OFFSET 2500
ordered: SELECT o.customer_id, o.id, avg(o.qty) OVER (PARTITION BY o.customer_id) FROM orders o WHERE o.qty > 5 ORDER BY o.id LIMIT 100
ordered: SELECT id, max(value) OVER (PARTITION BY id) FROM events ORDER BY id LIMIT 50
SELECT customer_id, id, row_number() OVER (PARTITION BY customer_id, status ORDER BY id) FROM orders
SELECT customer_id, id, ntile(3) OVER (PARTITION BY customer_id ORDER BY id) FROM orders WHERE customer_id < 100
ordered: SELECT customer_id, id FROM orders ORDER BY row_number() OVER (PARTITION BY customer_id ORDER BY id DESC), id LIMIT 20
ordered: SELECT DISTINCT customer_id, count(*) OVER (PARTITION BY customer_id) FROM orders ORDER BY customer_id
ordered: SELECT c.id, o.id, sum(o.qty) OVER (PARTITION BY c.id ORDER BY o.id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM customers c JOIN orders o ON o.customer_id = c.id ORDER BY o.id LIMIT 100
SELECT k, row_number() OVER (PARTITION BY k) FROM empty_t
SELECT id, row_number() OVER (PARTITION BY status ORDER BY id) FROM orders
refuse: SELECT status, count(*), rank() OVER (ORDER BY count(*)) FROM orders GROUP BY status

-- @window-merged
-- Window functions whose partitions span shards: the shards sort by the
-- window's keys, the proxy merges and computes the window columns.
SELECT id, row_number() OVER (ORDER BY id) FROM orders WHERE qty > 20
ordered: SELECT id, row_number() OVER (ORDER BY id) FROM orders ORDER BY id LIMIT 10
ordered: SELECT id, row_number() OVER (ORDER BY id DESC) FROM orders ORDER BY id DESC LIMIT 5 OFFSET 100
SELECT id, status, row_number() OVER (PARTITION BY status ORDER BY id) FROM orders
ordered: SELECT status, id, row_number() OVER (PARTITION BY status ORDER BY id) AS rn FROM orders ORDER BY status, id
ordered: SELECT status, id, rank() OVER (PARTITION BY status ORDER BY id) FROM orders ORDER BY status DESC, id LIMIT 50
SELECT status, id, count(*) OVER w FROM orders WINDOW w AS (PARTITION BY status ORDER BY id) ORDER BY status NULLS FIRST
SELECT id, qty, rank() OVER (ORDER BY qty) FROM orders
SELECT id, qty, dense_rank() OVER (ORDER BY qty DESC) FROM orders
SELECT id, qty, percent_rank() OVER (ORDER BY qty NULLS FIRST) FROM orders
SELECT id, qty, cume_dist() OVER (ORDER BY qty) FROM orders
SELECT id, status, qty, rank() OVER (PARTITION BY status ORDER BY qty), dense_rank() OVER (PARTITION BY status ORDER BY qty) FROM orders
SELECT id, status, percent_rank() OVER (PARTITION BY status ORDER BY amount), cume_dist() OVER (PARTITION BY status ORDER BY amount) FROM orders
SELECT id, rank() OVER (), dense_rank() OVER (), percent_rank() OVER (), cume_dist() OVER () FROM orders
SELECT id, ntile(4) OVER (ORDER BY id) FROM orders
SELECT id, status, ntile(7) OVER (PARTITION BY status ORDER BY id) FROM orders
SELECT id, ntile(5000) OVER (ORDER BY id) FROM orders
SELECT id, tier, ntile(3) OVER (PARTITION BY tier ORDER BY id) FROM customers
SELECT id, lag(amount) OVER (ORDER BY id) FROM orders
SELECT id, lead(note, 3) OVER (ORDER BY id) FROM orders
SELECT id, status, lag(weight, 2) OVER (PARTITION BY status ORDER BY id), lead(weight) OVER (PARTITION BY status ORDER BY id) FROM orders
SELECT id, lag(id, 0) OVER (ORDER BY id), lag(placed, -1) OVER (ORDER BY id) FROM orders
SELECT id, big, lag(big) OVER (ORDER BY id), lead(price) OVER (ORDER BY id) FROM orders
SELECT id, first_value(amount) OVER (PARTITION BY status ORDER BY id), last_value(amount) OVER (PARTITION BY status ORDER BY id) FROM orders
SELECT id, first_value(id) OVER (PARTITION BY paid ORDER BY id DESC) FROM orders
SELECT id, nth_value(ratio, 3) OVER (PARTITION BY status ORDER BY id) FROM orders
SELECT id, nth_value(note, 1) OVER (ORDER BY id) FROM orders
SELECT id, qty, last_value(qty) OVER (PARTITION BY qty), first_value(qty) OVER (PARTITION BY qty) FROM orders
SELECT id, qty, last_value(id) OVER (ORDER BY qty, id) FROM orders
SELECT id, count(*) OVER () FROM orders
SELECT id, count(*) OVER (PARTITION BY status), count(note) OVER (PARTITION BY status) FROM orders
SELECT id, qty, count(*) OVER (ORDER BY qty), count(qty) OVER (ORDER BY qty) FROM orders
SELECT id, count(amount) OVER (PARTITION BY paid ORDER BY placed) FROM orders
SELECT k, row_number() OVER (ORDER BY k), lag(v) OVER (ORDER BY k), count(*) OVER (ORDER BY k) FROM empty_t
SELECT k, rank() OVER (PARTITION BY t ORDER BY v), cume_dist() OVER (PARTITION BY t ORDER BY v) FROM empty_t
ordered: SELECT id, row_number() OVER w, lag(amount) OVER w, lead(amount) OVER w FROM orders WINDOW w AS (ORDER BY id) ORDER BY id LIMIT 20
SELECT id, row_number() OVER (PARTITION BY customer_id % 3 ORDER BY id) FROM orders
SELECT o.id, rank() OVER (PARTITION BY o.status ORDER BY o.qty DESC NULLS LAST) FROM orders o WHERE o.qty > 10
SELECT id, country, dense_rank() OVER (ORDER BY country) FROM customers
SELECT id, kind, row_number() OVER (PARTITION BY kind ORDER BY at, id) FROM events
SELECT id, value, rank() OVER (PARTITION BY ok ORDER BY value DESC) FROM events
ordered: SELECT id, cume_dist() OVER (ORDER BY id) FROM events ORDER BY id OFFSET 1190
SELECT id, vip, count(*) OVER (PARTITION BY vip ORDER BY credit) FROM customers
ordered: SELECT id, row_number() OVER (ORDER BY id) FROM orders WHERE false ORDER BY id
SELECT id, customer_id, row_number() OVER (ORDER BY id) FROM orders WHERE customer_id IN (1, 2, 3)
ordered: SELECT id, rank() OVER (ORDER BY id) FROM orders ORDER BY 1 LIMIT 3
ordered: SELECT id AS x, row_number() OVER (ORDER BY id) AS n FROM orders ORDER BY x LIMIT 3
ordered: SELECT status, id, lead(id) OVER (PARTITION BY status ORDER BY id) FROM orders ORDER BY status NULLS FIRST, id LIMIT 30
refuse: SELECT id, row_number() OVER (ORDER BY id) FROM orders ORDER BY qty
refuse: SELECT id, rank() OVER (ORDER BY id), rank() OVER (ORDER BY qty) FROM orders
refuse: SELECT id, row_number() OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) FROM orders
refuse: SELECT id, row_number() OVER (ORDER BY id) * 2 FROM orders
refuse: SELECT *, row_number() OVER (ORDER BY id) FROM orders
refuse: SELECT id, avg(qty) OVER (ORDER BY id) FROM orders
SELECT id, qty, min(qty) OVER (ORDER BY id), max(qty) OVER (ORDER BY id) FROM orders
SELECT id, status, min(amount) OVER (PARTITION BY status), max(amount) OVER (PARTITION BY status) FROM orders
SELECT id, max(weight) OVER (PARTITION BY paid ORDER BY qty), min(placed) OVER (PARTITION BY paid ORDER BY qty) FROM orders
SELECT id, min(status) OVER (ORDER BY id DESC), max(big) OVER (ORDER BY id DESC) FROM orders
SELECT id, min(name) OVER (PARTITION BY tier ORDER BY score), max(created) OVER (PARTITION BY tier ORDER BY score) FROM customers
SELECT k, min(v) OVER (), max(t) OVER () FROM empty_t
refuse: SELECT id, min(note) OVER (ORDER BY id) FROM orders

-- @set-operations
-- UNION / INTERSECT / EXCEPT [ALL] across shards: duplicates removed and
-- sides matched over all shards, rows counted for ALL.
SELECT id FROM customers UNION SELECT customer_id FROM orders
SELECT status FROM orders UNION SELECT kind FROM events
SELECT tier FROM customers UNION SELECT tier FROM customers
SELECT id FROM customers INTERSECT SELECT customer_id FROM orders
SELECT customer_id FROM orders EXCEPT SELECT id FROM customers
SELECT qty FROM orders INTERSECT ALL SELECT tier FROM customers
SELECT qty FROM orders EXCEPT ALL SELECT tier FROM customers
SELECT tier FROM customers EXCEPT ALL SELECT qty FROM orders WHERE qty < 4
SELECT status, paid FROM orders INTERSECT SELECT kind, ok FROM events
SELECT status, paid FROM orders EXCEPT SELECT kind, ok FROM events
SELECT status FROM orders UNION ALL SELECT kind FROM events UNION SELECT name FROM countries
SELECT lower(status) AS s FROM orders UNION SELECT lower(kind) FROM events
ordered: SELECT id FROM customers UNION SELECT customer_id FROM orders ORDER BY 1 LIMIT 30
ordered: SELECT id AS k FROM customers UNION ALL SELECT id FROM events ORDER BY k DESC LIMIT 40 OFFSET 5
ordered: SELECT qty FROM orders INTERSECT ALL SELECT tier FROM customers ORDER BY qty NULLS FIRST
ordered: SELECT status FROM orders EXCEPT SELECT kind FROM events ORDER BY status NULLS FIRST
ordered: SELECT customer_id, qty FROM orders WHERE qty > 8 UNION SELECT id, tier FROM customers WHERE tier > 2 ORDER BY 1, 2 LIMIT 50
SELECT NULL::int AS n FROM orders UNION SELECT NULL::int FROM events
SELECT k FROM empty_t UNION SELECT k FROM empty_t
SELECT k FROM empty_t INTERSECT SELECT id FROM orders
SELECT id FROM orders WHERE id < 10 EXCEPT SELECT k FROM empty_t
SELECT amount FROM orders WHERE qty = 3 INTERSECT SELECT credit FROM customers
refuse: SELECT count(*) FROM orders UNION ALL SELECT count(*) FROM events
refuse: SELECT status FROM orders INTERSECT (SELECT kind FROM events EXCEPT SELECT name FROM countries)
refuse: (SELECT id FROM orders ORDER BY id LIMIT 3) UNION SELECT id FROM events

-- @materialized-subquery
-- A subquery (FROM or WITH) that combines rows of several shards, under an
-- outer query that reads nothing else sharded: the subquery is merged,
-- then the outer query runs on one shard over its rows.
WITH s AS (SELECT status, count(*) AS n FROM orders GROUP BY status) SELECT * FROM s
SELECT count(*) FROM (SELECT * FROM orders ORDER BY id LIMIT 10) s
SELECT count(*) FROM (SELECT DISTINCT status FROM orders) d
ordered: SELECT * FROM (SELECT id, row_number() OVER (ORDER BY id) AS r FROM orders) s WHERE r < 5 ORDER BY id
SELECT count(*), sum(n), max(sq) FROM (SELECT status, count(*) AS n, sum(qty) AS sq FROM orders GROUP BY status) s
ordered: SELECT s.n, count(*) FROM (SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id) s GROUP BY s.n ORDER BY s.n
ordered: SELECT status, total, rank() OVER (ORDER BY total DESC NULLS LAST) FROM (SELECT status, sum(amount) AS total FROM orders GROUP BY status) s ORDER BY 3, 1 NULLS FIRST
ordered: WITH t AS (SELECT customer_id, sum(amount) AS spent FROM orders GROUP BY customer_id) SELECT c.code, count(*) FROM t JOIN countries c ON c.code = (SELECT 'DE') GROUP BY c.code ORDER BY 1
SELECT avg(spent), min(spent), percentile_disc(0.5) WITHIN GROUP (ORDER BY spent) FROM (SELECT customer_id, sum(amount) AS spent FROM orders GROUP BY customer_id) s
WITH k AS (SELECT kind, count(*) AS n, bool_and(ok) AS all_ok FROM events GROUP BY kind) SELECT a.kind, b.kind FROM k a JOIN k b ON a.n = b.n AND a.kind < b.kind
SELECT x.placed, x.n FROM (SELECT placed, count(*) AS n, min(note) AS note FROM orders GROUP BY placed) x WHERE x.note IS NULL
SELECT * FROM (SELECT k, sum(v) FROM empty_t GROUP BY k) s
refuse: SELECT count(*) FROM (SELECT o.status FROM orders o JOIN events e ON e.value = o.qty GROUP BY o.status) s
refuse: SELECT * FROM orders o JOIN (SELECT status, count(*) AS n FROM orders GROUP BY status) s USING (status)

-- @reference-driven
-- Reference-table rows that reach the answer without a sharded row of
-- their own (preserved side of an outer join, EXISTS/IN/NOT EXISTS over a
-- sharded table, a set-operation branch): run on every shard, each shard
-- would answer them once.
refuse: SELECT k.code FROM countries k WHERE EXISTS (SELECT 1 FROM customers c WHERE c.country = k.code)
refuse: SELECT code FROM countries WHERE code IN (SELECT country FROM customers)
refuse: SELECT code FROM countries k WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.country = k.code)
refuse: SELECT c.id, k.code FROM customers c RIGHT JOIN countries k ON k.code = c.country
refuse: SELECT c.id, k.code FROM customers c FULL JOIN countries k ON k.code = c.country
refuse: SELECT g, count(o.id) FROM generate_series(1, 5) g LEFT JOIN orders o ON o.qty = g GROUP BY g
refuse: SELECT code FROM countries UNION ALL SELECT country FROM customers
refuse: SELECT k.code, (SELECT count(*) FROM customers c WHERE c.country = k.code) FROM countries k
refuse: SELECT count(*) FROM (SELECT k.code FROM countries k WHERE EXISTS (SELECT 1 FROM customers c WHERE c.country = k.code)) s JOIN orders o ON o.status = s.code
SELECT country FROM customers EXCEPT SELECT code FROM countries
SELECT country FROM customers INTERSECT SELECT code FROM countries
SELECT code FROM countries UNION SELECT country FROM customers
refuse: SELECT code FROM countries EXCEPT ALL SELECT country FROM customers
refuse: SELECT country FROM customers INTERSECT ALL SELECT code FROM countries
SELECT c.id, k.code FROM countries k RIGHT JOIN customers c ON k.code = c.country
SELECT c.id, k.code FROM customers c LEFT JOIN countries k ON k.code = c.country
SELECT count(*) FROM customers c JOIN countries k ON k.code = c.country WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id)

-- @gathered-join
-- A sharded table gathered (its named columns, filtered by the statement's
-- own conditions on it) and joined on every shard, or on one shard when the
-- rest reads no sharded table: joins not on the shard keys, reference rows
-- kept by an outer join or filtered by EXISTS over a sharded table.
ordered: SELECT o.id, e.kind FROM orders o JOIN events e ON e.id = o.id ORDER BY o.id LIMIT 50
SELECT count(*), sum(o.qty), max(e.value) FROM orders o JOIN events e ON e.id = o.id
ordered: SELECT e.kind, count(*), sum(o.qty) FROM orders o JOIN events e ON e.value = o.qty WHERE e.ok GROUP BY e.kind ORDER BY 1 NULLS FIRST
SELECT o.status, count(e.id) FROM orders o LEFT JOIN events e ON e.value = o.qty AND e.ok GROUP BY o.status
ordered: SELECT c.tier, avg(o.amount), count(*) FROM customers c JOIN orders o ON o.qty = c.tier GROUP BY c.tier ORDER BY 1
SELECT count(*) FROM orders o, events e WHERE e.id = o.id AND o.qty > 20 AND e.kind IS NOT NULL
SELECT c.name, o.id, e.kind FROM customers c JOIN orders o ON o.customer_id = c.id JOIN events e ON e.id = o.id WHERE c.tier = 2
SELECT a.id, b.id FROM customers a JOIN customers b ON a.name = b.name AND a.id < b.id
SELECT count(*) FROM orders NATURAL JOIN events
SELECT * FROM customers c JOIN events e ON e.id = c.score WHERE c.vip
ordered: SELECT c.id, c.credit, c.created, o.placed, o.ratio, o.note FROM customers c JOIN orders o ON o.id = c.id ORDER BY c.id LIMIT 40
SELECT count(*) FROM orders o JOIN empty_t t ON t.v = o.qty
SELECT t.k, o.id FROM empty_t t RIGHT JOIN orders o ON t.v = o.qty WHERE o.id < 30
SELECT count(*) FROM orders o WHERE o.id IN (SELECT id FROM events WHERE ok)
SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = o.id)
ordered: SELECT k.code, count(c.id) FROM countries k LEFT JOIN customers c ON c.country = k.code GROUP BY k.code ORDER BY k.code
SELECT k.name FROM countries k WHERE k.code IN (SELECT country FROM customers WHERE vip)
SELECT count(DISTINCT qty), count(DISTINCT status) FROM orders
SELECT * FROM tiers
SELECT c.id, t.label FROM customers c JOIN tiers t ON t.tier = c.tier WHERE c.id < 50
ordered: SELECT t.label, count(c.id) FROM tiers t LEFT JOIN customers c ON c.tier = t.tier GROUP BY t.label ORDER BY 1 NULLS FIRST
SELECT count(*) FROM orders WHERE qty IN (SELECT tier FROM tiers)
SELECT o.id FROM orders o JOIN tiers t ON t.tier = o.qty WHERE o.customer_id = 7
tx,refuse: UPDATE orders SET qty = qty + 1 WHERE qty IN (SELECT tier FROM tiers)
SELECT * FROM orders o FULL JOIN events e ON e.id = o.id
SELECT o.status, count(e.id) FROM orders o FULL JOIN events e ON e.value = o.qty GROUP BY o.status
SELECT count(DISTINCT o.qty), count(DISTINCT e.kind) FROM orders o JOIN events e ON e.value = o.qty
SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM events)

-- @scalar-subquery
-- An uncorrelated scalar subquery over several shards: merged once, its
-- value bound as a parameter of the statement, which then runs as any other.
ordered: SELECT id FROM orders WHERE qty > (SELECT avg(qty) FROM orders) ORDER BY id LIMIT 20
SELECT count(*) FROM orders WHERE amount >= (SELECT max(amount) FROM orders WHERE status = 'paid')
SELECT (SELECT count(*) FROM events), (SELECT 1)
ordered: SELECT status, count(*) FROM orders GROUP BY status HAVING count(*) > (SELECT count(*) / 10 FROM orders) ORDER BY 1 NULLS FIRST
SELECT name FROM countries WHERE code = (SELECT min(country) FROM customers)
SELECT count(*) FROM orders WHERE placed > (SELECT max(placed) FROM orders WHERE false)
SELECT id FROM customers WHERE id = (SELECT max(customer_id) FROM orders WHERE customer_id < 100)
error: SELECT id FROM orders WHERE qty = (SELECT qty FROM orders)
SELECT id FROM orders o WHERE qty > (SELECT avg(e.value) FROM events e WHERE e.kind = o.status)
-- Correlated through a column only the outer query has, unqualified: the
-- subquery fails by itself, so the statement is answered by gathering.
SELECT id FROM orders WHERE qty > (SELECT avg(e.value) FROM events e WHERE e.kind = status)
SELECT id FROM customers WHERE score < (SELECT count(*) FROM events WHERE value < tier)
ordered: SELECT id, (SELECT count(*) FROM orders WHERE customer_id = -score) AS n FROM customers WHERE vip ORDER BY id

-- @glued-signs
-- A sign written against an operator (`>-1`): PostgreSQL reads `> -1`,
-- and so must the proxy where it plans or evaluates the expression.
ordered: SELECT status, sum(qty)>-5 AS pos, count(*)*-1 AS neg FROM orders GROUP BY status ORDER BY status
SELECT count(*) FROM orders WHERE qty>-1 AND amount<>-1
ordered: SELECT customer_id FROM orders GROUP BY customer_id HAVING min(qty)>=-3 ORDER BY customer_id LIMIT 5
ordered: SELECT id, name FROM customers WHERE id=-5
ordered: SELECT id FROM customers WHERE id<-15 ORDER BY id
