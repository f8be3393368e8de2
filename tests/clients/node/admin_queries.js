// Parameterised admin-console queries with node-postgres: typed results, a
// named prepared statement used twice, a join with an aggregate. Prints JSON.
// Usage: node admin_queries.js HOST PORT USER PASSWORD SHARD
const { Client } = require('pg');

(async () => {
  const [host, port, user, password, shard] = process.argv.slice(2);
  const c = new Client({ host, port: Number(port), user, password, database: 'shardgate' });
  await c.connect();
  const out = {};
  let r = await c.query(
    'SELECT node, shard, role, lag_bytes, in_recovery FROM shardgate.nodes WHERE shard = $1 ORDER BY role',
    [Number(shard)]);
  out.nodes = r.rows;
  out.oids = r.fields.map((f) => f.dataTypeID);
  for (let i = 0; i < 2; i++) {
    r = await c.query({
      name: 'primaries',
      text: 'SELECT count(*) AS n FROM shardgate.nodes WHERE shard = $1 AND role = $2',
      values: [Number(shard), 'primary'],
    });
  }
  out.prepared = r.rows[0].n;
  r = await c.query(
    'SELECT n.shard, sum(p.cl_waiting) AS waiting FROM shardgate.nodes n JOIN shardgate.pools p USING (node) GROUP BY n.shard ORDER BY n.shard');
  out.join = r.rows;
  try {
    await c.query('SELECT * FROM shardgate.no_such_table');
  } catch (e) {
    out.missing = e.code;
  }
  await c.end();
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
