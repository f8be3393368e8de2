-- The sample schema `shardgate demo` creates through the proxy at start-up.
-- DDL goes to every shard. `customers` is sharded by `id` and `orders` by
-- `customer_id` (hash, bigint): a customer's orders live on the customer's
-- shard, so the foreign key and joins on the key work on each shard.
-- `countries` is a reference table: a full copy on every shard.
CREATE TABLE countries (
    code text PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE customers (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    country text NOT NULL REFERENCES countries (code)
);

CREATE TABLE orders (
    id bigint NOT NULL,
    customer_id bigint NOT NULL REFERENCES customers (id),
    amount numeric(10, 2) NOT NULL,
    status text NOT NULL,
    PRIMARY KEY (customer_id, id)
);

INSERT INTO countries (code, name) VALUES
    ('US', 'United States'), ('CA', 'Canada'), ('MX', 'Mexico'), ('BR', 'Brazil'),
    ('DE', 'Germany'), ('FR', 'France'), ('ES', 'Spain'), ('IT', 'Italy'),
    ('GB', 'United Kingdom'), ('NL', 'Netherlands'), ('SE', 'Sweden'), ('PL', 'Poland'),
    ('JP', 'Japan'), ('KR', 'South Korea'), ('IN', 'India'), ('AU', 'Australia');
