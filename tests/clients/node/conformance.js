#!/usr/bin/env node
// node-postgres program of the driver conformance matrix (../SCENARIOS.md):
// runs the 20 scenarios through shardgate with pg (Client, parameterised and
// named prepared queries, queued and pipelined queries), pg-cursor and
// pg-copy-streams, checks the data directly on the primaries, and prints one
// JSON line per scenario. `node conformance.js hold KEY` is the child process
// of scenario client_killed; SG_ONLY=name,name runs only those scenarios (by
// hand). Node 18 compatible (CommonJS, no newer APIs).
'use strict'

const net = require('net')
const { spawn } = require('child_process')
const { Readable } = require('stream')
const { pipeline } = require('stream/promises')
const { isDeepStrictEqual } = require('util')

const pg = require('pg')
const Cursor = require('pg-cursor')
const { from: copyFrom, to: copyTo } = require('pg-copy-streams')

// ---------------------------------------------------------------- environment

const env = process.env
const HOST = env.SG_HOST || '127.0.0.1'
const PORT = Number(env.SG_PORT || 5432)
const USER = env.SG_USER
const PASSWORD = env.SG_PASSWORD
const DATABASE = env.SG_DATABASE
const TOPOLOGY = env.SG_TOPOLOGY || 'single'
const PRIMARIES = (env.SG_PRIMARIES || '').split(',').filter(Boolean)
const REF = env.SG_REF || ''
const REF_DATABASE = env.SG_REF_DATABASE
const BASE = Number(env.SG_KEY_BASE || 0)
// `direct.env` points SG_HOST:SG_PORT at a primary: no proxy in between.
const DIRECT = PRIMARIES.includes(`${HOST}:${PORT}`)

const SCENARIO_TIMEOUT_MS = 60000
const SETTLE_MS = 10000
const CURRENCIES = ['USD', 'EUR', 'JPY', 'GBP']

// ---------------------------------------------------------------- utilities

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const log = (...args) => console.error('[node-conformance]', ...args)

/** A failed check: its message is the scenario's detail. */
class Fail extends Error {}

/** An error as a user sees it: SQLSTATE, message and server detail. */
function errText(e) {
  if (!e) return String(e)
  let s = e.code ? `${e.code} ${e.message}` : String(e.message || e)
  if (e.detail) s += ` (detail: ${e.detail})`
  return s
}

/** Runs `promise`, throwing Fail after `ms` (the promise keeps running). */
async function within(ms, what, promise) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Fail(`${what}: no answer within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** Awaits `promise`, which must fail with SQLSTATE `code`. */
async function expectError(what, code, promise) {
  try {
    const r = await promise
    throw new Fail(`${what}: expected error ${code}, but it succeeded (${r && r.command} ${r && r.rowCount})`)
  } catch (e) {
    if (e instanceof Fail) throw e
    if (e.code !== code) throw new Fail(`${what}: expected error ${code}, got ${errText(e)}`)
    return e
  }
}

function expectEq(what, expected, found) {
  if (!isDeepStrictEqual(expected, found)) {
    throw new Fail(`${what}: expected ${JSON.stringify(expected)}, found ${JSON.stringify(found)}`)
  }
}

/** Polls `mismatch()` (null when matching, else a description) for up to `ms`. */
async function settle(mismatch, ms = SETTLE_MS) {
  const end = Date.now() + ms
  for (;;) {
    const m = await mismatch()
    if (m == null) return
    if (Date.now() > end) throw new Fail(`${m} (still after ${ms / 1000} s)`)
    await sleep(200)
  }
}

const firstFew = (list, n = 5) => list.slice(0, n).join(', ') + (list.length > n ? `, ... (${list.length})` : '')

// ---------------------------------------------------------------- keys and rows

/** Key `k` of scenario `i` (1-based). */
const key = (i, k) => BASE + 1000 * i + k
/** The key range of scenario `i`. */
const range = (i) => [key(i, 0), key(i, 999)]

/** Account row `k` of scenario `i`: deterministic, spread over currencies and balances. */
function acct(i, k, over) {
  return Object.assign(
    {
      id: key(i, k),
      owner: `node-${i}-${k}`,
      currency: CURRENCIES[k % 4],
      balance: (((k * 7919) % 100000) / 100).toFixed(2),
    },
    over || {}
  )
}

const INSERT_ACCOUNT = 'INSERT INTO accounts (id, owner, currency, balance) VALUES ($1, $2, $3, $4)'
const acctValues = (a) => [a.id, a.owner, a.currency, a.balance]

// ---------------------------------------------------------------- connections

/** One scenario's resources: every client and child it opens is closed at its end. */
class Ctx {
  constructor(name) {
    this.name = name
    this.clients = []
    this.children = []
    this.at = 'start'
    this._primaries = null
  }

  /** Records what the scenario is doing (reported when it times out). */
  step(what) {
    this.at = what
  }

  async connect(config, label) {
    const client = new pg.Client(
      Object.assign(
        {
          user: USER,
          password: PASSWORD,
          connectionTimeoutMillis: 10000,
          application_name: `conformance-node-${this.name}`,
        },
        config
      )
    )
    // An idle client's connection error is emitted as 'error': never crash on it.
    client.on('error', (e) => log(`${this.name}/${label}: connection error: ${errText(e)}`))
    // Remember the last statement issued, for the detail of an unexpected error or a hang.
    const query = client.query.bind(client)
    client.query = (config, values, callback) => {
      const text = typeof config === 'string' ? config : (config && config.text) || '?'
      this.at = `${label}: ${text.replace(/\s+/g, ' ').slice(0, 100)}`
      return query(config, values, callback)
    }
    this.clients.push(client)
    try {
      await client.connect()
    } catch (e) {
      throw new Fail(`connect ${label} (${config.host}:${config.port}/${config.database}): ${errText(e)}`)
    }
    return client
  }

  /** A client through the proxy (or straight to the server in `direct`). */
  proxy(extra) {
    return this.connect(Object.assign({ host: HOST, port: PORT, database: DATABASE }, extra || {}), 'proxy')
  }

  /** One client per primary, for checking data directly: [[addr, client], ...]. */
  async primaries() {
    if (!this._primaries) {
      const list = []
      for (const addr of PRIMARIES) {
        const [host, port] = addr.split(':')
        list.push([addr, await this.connect({ host, port: Number(port), database: DATABASE }, `primary ${addr}`)])
      }
      this._primaries = list
    }
    return this._primaries
  }

  /** A client to the unsharded reference database. */
  ref() {
    const [host, port] = REF.split(':')
    return this.connect({ host, port: Number(port), database: REF_DATABASE }, 'reference')
  }

  async close() {
    for (const child of this.children) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    }
    await Promise.all(this.clients.map(closeClient))
  }
}

async function closeClient(client) {
  try {
    await within(3000, 'end', client.end())
  } catch (e) {
    try {
      client.connection.stream.destroy()
    } catch (_) {
      // already gone
    }
  }
}

// ---------------------------------------------------------------- direct checks on the primaries

/** Rows of accounts in [lo, hi] on every primary: {byId: Map(id -> row), dups}. */
async function primaryAccounts(ctx, lo, hi) {
  const byId = new Map()
  const dups = []
  for (const [addr, c] of await ctx.primaries()) {
    const r = await c.query(
      'SELECT id::text AS id, owner, currency, balance::text AS balance FROM accounts WHERE id BETWEEN $1 AND $2 ORDER BY id',
      [lo, hi]
    )
    for (const row of r.rows) {
      if (byId.has(row.id)) dups.push(`${row.id} on ${byId.get(row.id).at} and ${addr}`)
      byId.set(row.id, Object.assign(row, { at: addr }))
    }
  }
  return { byId, dups }
}

/** The primaries hold exactly `expected` (account objects) in [lo, hi], each once. */
async function checkAccounts(ctx, what, lo, hi, expected) {
  const { byId, dups } = await primaryAccounts(ctx, lo, hi)
  const want = new Map(expected.map((a) => [String(a.id), a]))
  const missing = []
  const extra = []
  const wrong = []
  for (const [id, a] of want) {
    const got = byId.get(id)
    if (!got) missing.push(id)
    else if (got.owner !== a.owner || got.currency !== a.currency || got.balance !== a.balance) {
      wrong.push(`${id} expected ${a.owner}/${a.currency}/${a.balance} found ${got.owner}/${got.currency}/${got.balance}`)
    }
  }
  for (const id of byId.keys()) if (!want.has(id)) extra.push(id)
  const problems = []
  if (missing.length) problems.push(`missing ${firstFew(missing)}`)
  if (extra.length) problems.push(`unexpected ${firstFew(extra)}`)
  if (wrong.length) problems.push(`wrong values ${firstFew(wrong, 3)}`)
  if (dups.length) problems.push(`on two primaries ${firstFew(dups, 3)}`)
  if (problems.length) {
    throw new Fail(`${what}: expected ${want.size} rows on the primaries, found ${byId.size}: ${problems.join('; ')}`)
  }
}

/** Sessions of SG_DATABASE `idle in transaction` on the primaries (other than ours). */
async function idleInTransaction(ctx) {
  const found = []
  for (const [addr, c] of await ctx.primaries()) {
    const r = await c.query(
      "SELECT pid, application_name FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
      [DATABASE]
    )
    for (const row of r.rows) found.push(`${addr} pid ${row.pid} (${row.application_name || 'no application_name'})`)
  }
  return found
}

/** Deletes the program's key range from every table on every primary. */
async function cleanKeyRange() {
  const ctx = new Ctx('cleanup')
  try {
    const [lo, hi] = [BASE, BASE + 999999]
    for (const [, c] of await ctx.primaries()) {
      await c.query('DELETE FROM ledger WHERE account_id BETWEEN $1 AND $2', [lo, hi])
      await c.query('DELETE FROM accounts WHERE id BETWEEN $1 AND $2', [lo, hi])
      await c.query('DELETE FROM typed WHERE id BETWEEN $1 AND $2', [lo, hi])
    }
  } finally {
    await ctx.close()
  }
}

// ---------------------------------------------------------------- reference database

/**
 * Runs `fn(client)` on the reference database with `rows` loaded in a
 * transaction that is rolled back: the three topologies' runs of this program
 * share the reference database and key range, so nothing is committed there.
 */
async function withRefRows(ctx, lo, hi, rows, fn) {
  const c = await ctx.ref()
  await c.query('BEGIN')
  try {
    await c.query('DELETE FROM accounts WHERE id BETWEEN $1 AND $2', [lo, hi])
    await c.query(
      'INSERT INTO accounts (id, owner, currency, balance) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::numeric[])',
      [rows.map((a) => a.id), rows.map((a) => a.owner), rows.map((a) => a.currency), rows.map((a) => a.balance)]
    )
    return await fn(c)
  } finally {
    await c.query('ROLLBACK')
    await closeClient(c)
  }
}

// ---------------------------------------------------------------- COPY helpers

/** COPY ... FROM STDIN of `data` through pg-copy-streams; the reported row count. */
async function copyIn(client, sql, data) {
  const stream = client.query(copyFrom(sql))
  await pipeline(Readable.from([data]), stream)
  return stream.rowCount
}

/** COPY ... TO STDOUT through pg-copy-streams: all bytes. */
async function copyOut(client, sql) {
  const chunks = []
  for await (const chunk of client.query(copyTo(sql))) chunks.push(chunk)
  return Buffer.concat(chunks)
}

const copyTextField = (s) => s.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n').replace(/\r/g, '\\r')
const csvField = (s) => (/[",\n\r]/.test(s) || s.trim() !== s ? `"${s.replace(/"/g, '""')}"` : s)

// Binary COPY format: signature, flags, header extension; tuples; trailer.
const PGCOPY_SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1')

const int16 = (v) => {
  const b = Buffer.alloc(2)
  b.writeInt16BE(v)
  return b
}
const int32 = (v) => {
  const b = Buffer.alloc(4)
  b.writeInt32BE(v)
  return b
}
const field = (bytes) => Buffer.concat([int32(bytes.length), bytes])

/** numeric's binary send format of a non-negative decimal string. */
function numericBinary(text) {
  const [intPart, fracPart = ''] = text.split('.')
  const dscale = fracPart.length
  const intPadded = intPart.replace(/^0+/, '').padStart(Math.ceil(intPart.replace(/^0+/, '').length / 4) * 4, '0')
  const fracPadded = fracPart.padEnd(Math.ceil(fracPart.length / 4) * 4, '0')
  let digits = []
  for (let p = 0; p < intPadded.length; p += 4) digits.push(Number(intPadded.slice(p, p + 4)))
  let weight = digits.length - 1
  for (let p = 0; p < fracPadded.length; p += 4) digits.push(Number(fracPadded.slice(p, p + 4)))
  while (digits.length && digits[0] === 0) {
    digits.shift()
    weight--
  }
  while (digits.length && digits[digits.length - 1] === 0) digits.pop()
  if (!digits.length) weight = 0
  const b = Buffer.alloc(8 + 2 * digits.length)
  b.writeInt16BE(digits.length, 0)
  b.writeInt16BE(weight, 2)
  b.writeUInt16BE(0x0000, 4) // positive
  b.writeInt16BE(dscale, 6)
  digits.forEach((d, n) => b.writeInt16BE(d, 8 + 2 * n))
  return b
}

/** The decimal string of numeric's binary format. */
function numericFromBinary(b) {
  const ndigits = b.readInt16BE(0)
  const weight = b.readInt16BE(2)
  const sign = b.readUInt16BE(4)
  const dscale = b.readInt16BE(6)
  const digits = []
  for (let n = 0; n < ndigits; n++) digits.push(b.readInt16BE(8 + 2 * n))
  let intStr = ''
  for (let w = 0; w <= weight; w++) intStr += String(digits[w] || 0).padStart(4, '0')
  intStr = intStr.replace(/^0+/, '') || '0'
  let frac = ''
  for (let w = weight + 1; frac.length < dscale; w++) frac += String(w >= 0 ? digits[w] || 0 : 0).padStart(4, '0')
  frac = frac.slice(0, dscale)
  return (sign === 0x4000 ? '-' : '') + intStr + (dscale ? `.${frac}` : '')
}

/** COPY binary bytes of accounts rows (id int8, owner text, currency text, balance numeric). */
function accountsBinary(rows) {
  const parts = [PGCOPY_SIGNATURE, int32(0), int32(0)]
  for (const a of rows) {
    const id = Buffer.alloc(8)
    id.writeBigInt64BE(BigInt(a.id))
    parts.push(
      int16(4),
      field(id),
      field(Buffer.from(a.owner, 'utf8')),
      field(Buffer.from(a.currency, 'utf8')),
      field(numericBinary(a.balance))
    )
  }
  parts.push(int16(-1))
  return Buffer.concat(parts)
}

/** Decodes COPY binary output of (id, owner, currency, balance) into account objects. */
function parseAccountsBinary(buf) {
  const streams = []
  let p = 0
  while (p < buf.length) {
    const { rows, end } = parseBinaryStream(buf, p)
    streams.push(rows)
    p = end
  }
  if (streams.length !== 1) {
    throw new Fail(
      `binary COPY output holds ${streams.length} complete streams (signature ... trailer each, ` +
        `${streams.map((r) => r.length).join(' + ')} rows): a reader stops at the first trailer`
    )
  }
  return streams[0]
}

/** One binary COPY stream (signature, header, tuples, trailer) starting at `start`. */
function parseBinaryStream(buf, start) {
  if (!buf.subarray(start, start + 11).equals(PGCOPY_SIGNATURE)) {
    throw new Fail(`binary COPY output: no signature at byte ${start}: ${buf.subarray(start, start + 11).toString('hex')}`)
  }
  let p = start + 11 + 4
  p += 4 + buf.readInt32BE(p)
  const rows = []
  for (;;) {
    if (buf.subarray(p, p + 11).equals(PGCOPY_SIGNATURE)) {
      throw new Fail(`binary COPY output: another signature at byte ${p}, inside the stream begun at byte ${start} (after ${rows.length} rows, before its trailer): several streams interleaved`)
    }
    const n = buf.readInt16BE(p)
    p += 2
    if (n === -1) break
    if (n !== 4) throw new Fail(`binary COPY output: tuple of ${n} fields at byte ${p - 2}, expected 4`)
    const f = []
    for (let j = 0; j < n; j++) {
      const len = buf.readInt32BE(p)
      p += 4
      f.push(len < 0 ? null : buf.subarray(p, p + len))
      p += Math.max(len, 0)
    }
    rows.push({
      id: Number(f[0].readBigInt64BE(0)),
      owner: f[1].toString('utf8'),
      currency: f[2].toString('utf8'),
      balance: numericFromBinary(f[3]),
    })
  }
  return { rows, end: p }
}

// ---------------------------------------------------------------- other helpers

/** Sends a CancelRequest (16 bytes: length, 80877102, process id, secret key) on a new socket. */
function sendCancel(processID, secretKey) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(PORT, HOST)
    const timer = setTimeout(() => {
      socket.destroy()
      resolve()
    }, 3000)
    socket.on('connect', () => {
      const b = Buffer.alloc(16)
      b.writeInt32BE(16, 0)
      b.writeInt32BE(80877102, 4)
      b.writeInt32BE(processID | 0, 8)
      b.writeInt32BE(secretKey | 0, 12)
      socket.end(b)
    })
    socket.on('error', (e) => {
      clearTimeout(timer)
      reject(new Fail(`cancel request: ${errText(e)}`))
    })
    socket.on('close', () => {
      clearTimeout(timer)
      resolve()
    })
  })
}

/**
 * Which primary (index) the proxy puts each key on: inserts probe rows
 * through the proxy, looks for them directly, deletes them directly.
 */
async function shardsOf(ctx, ids) {
  const c = await ctx.proxy()
  for (const id of ids) await c.query(INSERT_ACCOUNT, [id, 'probe', 'USD', '0'])
  const where = new Map()
  const prim = await ctx.primaries()
  for (let n = 0; n < prim.length; n++) {
    const r = await prim[n][1].query('SELECT id::text AS id FROM accounts WHERE id = ANY($1::bigint[])', [ids])
    for (const row of r.rows) where.set(Number(row.id), n)
    await prim[n][1].query('DELETE FROM accounts WHERE id = ANY($1::bigint[])', [ids])
  }
  const lost = ids.filter((id) => !where.has(id))
  if (lost.length) throw new Fail(`probe rows inserted through the proxy not on any primary: ${firstFew(lost)}`)
  return where
}

// ================================================================ scenarios

const scenarios = []
const scenario = (name, fn) => scenarios.push({ name, fn })

// 1. Autocommit, one parameterised statement each (extended protocol:
// Parse/Bind/Describe/Execute/Sync per query): rows affected and data.
scenario('autocommit', async (ctx) => {
  const i = 1
  const c = await ctx.proxy()
  const rows = []
  for (let k = 0; k < 10; k++) {
    const a = acct(i, k)
    const r = await c.query(INSERT_ACCOUNT, acctValues(a))
    expectEq(`INSERT ${a.id} rowCount`, 1, r.rowCount)
    rows.push(a)
  }
  const u = await c.query('UPDATE accounts SET balance = $2, owner = $3 WHERE id = $1', [key(i, 3), '42.42', 'updated'])
  expectEq('UPDATE rowCount', 1, u.rowCount)
  rows[3] = acct(i, 3, { balance: '42.42', owner: 'updated' })
  const d = await c.query('DELETE FROM accounts WHERE id = $1', [key(i, 7)])
  expectEq('DELETE rowCount', 1, d.rowCount)
  rows.splice(7, 1)
  await checkAccounts(ctx, 'after INSERT x10, UPDATE, DELETE', ...range(i), rows)
})

/** Scenarios 2 and 3: BEGIN; named prepared UPDATE; 5 INSERTs; COMMIT or ROLLBACK. */
async function txScenario(ctx, i, end) {
  const c = await ctx.proxy()
  const existing = acct(i, 0, { balance: '100.00' })
  await c.query(INSERT_ACCOUNT, acctValues(existing))
  await c.query('BEGIN')
  // The first statement of the transaction: a named prepared statement.
  const u = await c.query({
    name: `upd_${i}`,
    text: 'UPDATE accounts SET balance = balance + $2 WHERE id = $1',
    values: [existing.id, '5.25'],
  })
  expectEq('first statement of the transaction (prepared UPDATE) rowCount', 1, u.rowCount)
  const inserted = []
  for (let k = 1; k <= 5; k++) {
    const a = acct(i, k)
    const r = await c.query(INSERT_ACCOUNT, acctValues(a))
    expectEq(`INSERT ${a.id} in the transaction rowCount`, 1, r.rowCount)
    inserted.push(a)
  }
  const e = await c.query(end)
  expectEq(`${end} command`, end, e.command)
  return { existing, inserted }
}

// 2. BEGIN as a query, a named prepared UPDATE first (Parse/Bind/Execute of a
// named statement as the transaction's first statement), INSERTs, COMMIT.
scenario('tx_commit', async (ctx) => {
  const i = 2
  const { existing, inserted } = await txScenario(ctx, i, 'COMMIT')
  await checkAccounts(ctx, 'after COMMIT', ...range(i), [Object.assign({}, existing, { balance: '105.25' }), ...inserted])
})

// 3. The same transaction rolled back: nothing of it on the primaries.
scenario('tx_rollback', async (ctx) => {
  const i = 3
  const { existing } = await txScenario(ctx, i, 'ROLLBACK')
  await checkAccounts(ctx, 'after ROLLBACK', ...range(i), [existing])
})

// 4. SAVEPOINT / ROLLBACK TO / RELEASE as SQL (node-postgres has no nested
// transaction API); a and b (and b and c) on different shards when sharded.
scenario('savepoint', async (ctx) => {
  const i = 4
  let [ka, kb, kc] = [0, 1, 2]
  if (PRIMARIES.length > 1 && !DIRECT) {
    const probes = Array.from({ length: 20 }, (_, k) => key(i, 100 + k))
    const where = await shardsOf(ctx, probes)
    const on0 = probes.filter((id) => where.get(id) === 0)
    const on1 = probes.filter((id) => where.get(id) === 1)
    if (on0.length < 2 || on1.length < 1) throw new Fail(`probe keys not spread over shards: ${on0.length} on shard 0, ${on1.length} on shard 1`)
    ;[ka, kb, kc] = [on0[0], on1[0], on0[1]].map((id) => id - key(i, 0))
  }
  const [a, b, cc] = [acct(i, ka, { owner: 'a' }), acct(i, kb, { owner: 'b' }), acct(i, kc, { owner: 'c' })]
  const c = await ctx.proxy()
  await c.query('BEGIN')
  await c.query(INSERT_ACCOUNT, acctValues(a))
  await c.query('SAVEPOINT s')
  await c.query(INSERT_ACCOUNT, acctValues(b))
  await c.query('ROLLBACK TO SAVEPOINT s')
  await c.query(INSERT_ACCOUNT, acctValues(cc))
  await c.query('RELEASE SAVEPOINT s')
  await c.query('COMMIT')
  await checkAccounts(ctx, 'a and c committed, b rolled back to the savepoint', ...range(i), [a, cc])
})

// 5. An error inside a transaction: 23505, then 25P02 for the next
// statement, ROLLBACK, and the connection is usable again.
scenario('error_in_tx', async (ctx) => {
  const i = 5
  const c = await ctx.proxy()
  const dup = acct(i, 0)
  await c.query(INSERT_ACCOUNT, acctValues(dup))
  const a = acct(i, 1)
  await c.query('BEGIN')
  await c.query(INSERT_ACCOUNT, acctValues(a))
  await expectError('duplicate INSERT in the transaction', '23505', c.query(INSERT_ACCOUNT, acctValues(dup)))
  await expectError('statement after the error', '25P02', c.query(INSERT_ACCOUNT, acctValues(acct(i, 2))))
  await c.query('ROLLBACK')
  const r = await c.query('SELECT 1 AS one')
  expectEq('SELECT 1 after ROLLBACK', [{ one: 1 }], r.rows)
  await checkAccounts(ctx, 'after the failed transaction', ...range(i), [dup])
})

// 6. One named prepared query ({name, text, values}: Parse once, then only
// Bind/Execute) run 10 times with keys on all shards, inside a transaction.
scenario('prepared_reuse', async (ctx) => {
  const i = 6
  const c = await ctx.proxy()
  const rows = Array.from({ length: 10 }, (_, k) => acct(i, k))
  for (const a of rows) await c.query(INSERT_ACCOUNT, acctValues(a))
  await c.query('BEGIN')
  const wrong = []
  for (const k of [3, 7, 0, 9, 1, 8, 2, 6, 4, 5]) {
    const r = await c.query({
      name: 'account_by_id',
      text: 'SELECT id, owner, currency, balance FROM accounts WHERE id = $1',
      values: [rows[k].id],
    })
    const want = [{ id: String(rows[k].id), owner: rows[k].owner, currency: rows[k].currency, balance: rows[k].balance }]
    if (!isDeepStrictEqual(r.rows, want)) wrong.push(`key ${rows[k].id}: ${JSON.stringify(r.rows)}`)
  }
  await c.query('COMMIT')
  if (wrong.length) throw new Fail(`prepared SELECT returned wrong rows: ${firstFew(wrong, 3)}`)
})

/** Issues every query of `queries` ([text, values]) without awaiting in between. */
function fireAll(client, queries) {
  return Promise.allSettled(queries.map(([text, values]) => client.query(text, values)))
}

/** Failures and row counts other than 1 among settled results. */
function badResults(settled, labels) {
  const bad = []
  settled.forEach((s, n) => {
    if (s.status === 'rejected') bad.push(`${labels[n]}: ${errText(s.reason)}`)
    else if (s.value.rowCount !== 1) bad.push(`${labels[n]}: rowCount ${s.value.rowCount}`)
  })
  return bad
}

// 7. Batches: 25 INSERTs queued on a default client (node-postgres sends the
// next one after each ReadyForQuery) and 25 on a `pipeline: true` client (all
// Parse/Bind/Execute/Sync written before any answer); then in a transaction
// a batch of UPDATEs on each, rolled back.
scenario('batch', async (ctx) => {
  const i = 7
  const queued = await ctx.proxy()
  const piped = await ctx.proxy({ pipeline: true })
  const rows = Array.from({ length: 50 }, (_, k) => acct(i, k))
  const halves = [
    [queued, 'queued', rows.slice(0, 25)],
    [piped, 'pipelined', rows.slice(25)],
  ]
  const bad = []
  const inserts = await Promise.all(halves.map(([c, , part]) => fireAll(c, part.map((a) => [INSERT_ACCOUNT, acctValues(a)]))))
  halves.forEach(([, label, part], n) => bad.push(...badResults(inserts[n], part.map((a) => `${label} INSERT ${a.id}`))))
  if (bad.length) throw new Fail(`batch INSERT: ${firstFew(bad, 3)}`)
  await checkAccounts(ctx, 'after the INSERT batches', ...range(i), rows)

  const updates = await Promise.all(
    halves.map(([c, , part]) =>
      fireAll(c, [['BEGIN'], ...part.map((a) => ['UPDATE accounts SET balance = balance + 1 WHERE id = $1', [a.id]]), ['ROLLBACK']])
    )
  )
  halves.forEach(([, label, part], n) => {
    const [begin, ...rest] = updates[n]
    const end = rest.pop()
    if (begin.status === 'rejected') bad.push(`${label} BEGIN: ${errText(begin.reason)}`)
    if (end.status === 'rejected') bad.push(`${label} ROLLBACK: ${errText(end.reason)}`)
    bad.push(...badResults(rest, part.map((a) => `${label} UPDATE ${a.id}`)))
  })
  if (bad.length) throw new Fail(`batch UPDATE in a transaction: ${firstFew(bad, 3)}`)
  await checkAccounts(ctx, 'after the rolled back UPDATE batches', ...range(i), rows)
})

// 8. RETURNING: ledger ids generated by the server and an updated balance,
// as returned to the user, equal what is on the primaries.
scenario('returning', async (ctx) => {
  const i = 8
  const c = await ctx.proxy()
  const accounts = [acct(i, 0, { balance: '10.00' }), acct(i, 1, { balance: '20.00' })]
  for (const a of accounts) await c.query(INSERT_ACCOUNT, acctValues(a))
  const returned = []
  for (const a of accounts) {
    for (const amount of ['1.50', '2.25']) {
      const r = await c.query('INSERT INTO ledger (account_id, amount, note) VALUES ($1, $2, $3) RETURNING id', [a.id, amount, 'returning'])
      if (r.rowCount !== 1 || r.rows.length !== 1) throw new Fail(`INSERT ... RETURNING id: rowCount ${r.rowCount}, rows ${JSON.stringify(r.rows)}`)
      returned.push({ account_id: String(a.id), id: r.rows[0].id, amount })
    }
  }
  const u = await c.query('UPDATE accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance', [accounts[1].id, '7.50'])
  expectEq('UPDATE ... RETURNING balance', [{ balance: '27.50' }], u.rows)

  const onPrimaries = []
  for (const [, p] of await ctx.primaries()) {
    const r = await p.query(
      'SELECT account_id::text AS account_id, id::text AS id, amount::text AS amount FROM ledger WHERE account_id BETWEEN $1 AND $2',
      range(i)
    )
    onPrimaries.push(...r.rows)
  }
  const sort = (l) => l.slice().sort((x, y) => (x.account_id + '/' + x.id < y.account_id + '/' + y.id ? -1 : 1))
  expectEq('ledger rows on the primaries vs the ids RETURNING gave', sort(returned), sort(onPrimaries))
  await checkAccounts(ctx, 'accounts after UPDATE ... RETURNING', ...range(i), [accounts[0], Object.assign({}, accounts[1], { balance: '27.50' })])
})

const CURSOR_I = 9
const cursorRows = () => Array.from({ length: 120 }, (_, k) => acct(CURSOR_I, k))

/** Loads the 120 rows of cursor_fetch through the proxy unless the primaries hold them already. */
async function loadCursorRows(ctx) {
  const rows = cursorRows()
  try {
    await checkAccounts(ctx, 'cursor rows', ...range(CURSOR_I), rows)
    return rows
  } catch (e) {
    if (!(e instanceof Fail)) throw e
  }
  for (const [, p] of await ctx.primaries()) await p.query('DELETE FROM accounts WHERE id BETWEEN $1 AND $2', range(CURSOR_I))
  const c = await ctx.proxy()
  for (const a of rows) await c.query(INSERT_ACCOUNT, acctValues(a))
  await checkAccounts(ctx, 'the 120 rows loaded through the proxy', ...range(CURSOR_I), rows)
  return rows
}

// 9. pg-cursor (named portal, Execute with a row limit of 7 and Flush, Sync
// only when closed) inside BEGIN/COMMIT; then an SQL cursor.
scenario('cursor_fetch', async (ctx) => {
  const [lo, hi] = range(CURSOR_I)
  const rows = await loadCursorRows(ctx)
  const sql = 'SELECT id, owner FROM accounts WHERE id BETWEEN $1 AND $2 ORDER BY id'
  const reference = await withRefRows(ctx, lo, hi, rows, async (r) => (await r.query(sql, [lo, hi])).rows)
  if (reference.length !== 120) throw new Fail(`reference returned ${reference.length} rows`)

  const c = await ctx.proxy()
  await c.query('BEGIN')
  const cursor = c.query(new Cursor(sql, [lo, hi]))
  const got = []
  const sizes = []
  for (;;) {
    ctx.step(`cursor read(7) #${sizes.length + 1}`)
    const batch = await cursor.read(7)
    sizes.push(batch.length)
    if (batch.length === 0) break
    got.push(...batch)
    if (sizes.length > 40) throw new Fail(`cursor never ended: ${got.length} rows read in ${sizes.length} batches`)
  }
  await cursor.close()
  await c.query('COMMIT')
  const wantSizes = [...Array(17).fill(7), 1, 0]
  if (!isDeepStrictEqual(got, reference)) {
    const ids = got.map((r) => r.id)
    const dupIds = ids.filter((id, n) => ids.indexOf(id) !== n)
    throw new Fail(
      `cursor rows differ from the reference: got ${got.length} rows (batch sizes ${sizes.join(',')}), expected 120; ` +
        `first ids ${firstFew(ids, 4)}; duplicated ${dupIds.length}; first mismatch at ${got.findIndex((r, n) => !isDeepStrictEqual(r, reference[n]))}`
    )
  }
  expectEq('cursor batch sizes', wantSizes, sizes)

  await c.query('BEGIN')
  await c.query(`DECLARE c CURSOR FOR SELECT count(*) FROM accounts WHERE id BETWEEN ${lo} AND ${hi}`)
  const f = await c.query('FETCH ALL FROM c')
  await c.query('CLOSE c')
  await c.query('COMMIT')
  expectEq('DECLARE/FETCH ALL count(*)', [{ count: '120' }], f.rows)
})

/**
 * Scenarios 10-12: COPY FROM STDIN of `data`, rows on the primaries, then
 * COPY (query) TO STDOUT and COPY accounts TO STDOUT (our keys only) equal to
 * the reference database's.
 */
async function copyScenario(ctx, i, rows, options, data, extract) {
  const [lo, hi] = range(i)
  const cols = 'accounts (id, owner, currency, balance)'
  const c = await ctx.proxy()
  const n = await copyIn(c, `COPY ${cols} FROM STDIN${options}`, data)
  expectEq('COPY FROM STDIN row count', rows.length, n)
  await checkAccounts(ctx, 'after COPY FROM STDIN', lo, hi, rows)

  const queryOut = `COPY (SELECT id, owner, currency, balance FROM accounts WHERE id BETWEEN ${lo} AND ${hi} ORDER BY id) TO STDOUT${options}`
  const tableOut = `COPY accounts TO STDOUT${options}`
  const inRange = (list) => list.filter((r) => r.id >= lo && r.id <= hi).sort((x, y) => x.id - y.id)
  const reference = await withRefRows(ctx, lo, hi, rows, async (r) => ({
    query: extract(await copyOut(r, queryOut)),
    table: inRange(extract(await copyOut(r, tableOut))),
  }))
  // Both forms are checked (and both reported); only missing rows are retried
  // (a replica catching up), not rows out of order or a malformed stream.
  const check = async (what, sql, expected, post) => {
    let found
    try {
      found = post(extract(await copyOut(c, sql)))
    } catch (e) {
      if (!(e instanceof Fail)) throw e
      return { text: `${what}: ${e.message}`, lag: false }
    }
    return diffRows(what, expected, found)
  }
  await settle(async () => {
    const diffs = [
      await check('COPY (SELECT ... ORDER BY id) TO STDOUT', queryOut, reference.query, (l) => l),
      await check('COPY accounts TO STDOUT (rows of our keys)', tableOut, reference.table, inRange),
    ].filter(Boolean)
    if (!diffs.length) return null
    const text = diffs.map((d) => d.text).join('; ')
    if (diffs.some((d) => !d.lag)) throw new Fail(text)
    return text
  })
}

/** Compares rows ({id, text}) read back with the reference's: null, or {text, lag}. */
function diffRows(what, expected, found) {
  const texts = (l) => l.map((r) => r.text)
  if (isDeepStrictEqual(texts(expected), texts(found))) return null
  const sorted = (l) => texts(l).sort()
  if (isDeepStrictEqual(sorted(expected), sorted(found))) {
    return { text: `${what}: the same ${found.length} rows, but out of order: ids ${firstFew(found.map((r) => r.id), 8)}`, lag: false }
  }
  const missing = texts(expected).filter((t) => !texts(found).includes(t))
  const extra = texts(found).filter((t) => !texts(expected).includes(t))
  const dups = texts(found).filter((t, n, l) => l.indexOf(t) !== n)
  const text =
    `${what}: expected ${expected.length} rows, found ${found.length}` +
    (missing.length ? `; missing ${firstFew(missing.map((t) => JSON.stringify(t)), 3)}` : '') +
    (extra.length ? `; unexpected ${firstFew(extra.map((t) => JSON.stringify(t)), 3)}` : '') +
    (dups.length ? `; duplicated ${firstFew(dups.map((t) => JSON.stringify(t)), 3)}` : '')
  return { text, lag: !extra.length && !dups.length }
}

/** Text or CSV COPY output as rows {id, text} (one per line; the key is the first field). */
const copyLines = (buf) =>
  buf
    .toString('utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => ({ id: Number(l.split(/[\t,]/)[0]), text: l }))

// 10. COPY in text format (with escapes and UTF-8).
scenario('copy_text', async (ctx) => {
  const i = 10
  const [lo, hi] = range(i)
  const special = { 3: 'tab\there', 5: 'back\\slash', 7: 'ünïcødé', 11: 'new\nline' }
  const rows = Array.from({ length: 20 }, (_, k) => acct(i, k, special[k] ? { owner: special[k] } : {}))
  const data = rows.map((a) => [a.id, copyTextField(a.owner), a.currency, a.balance].join('\t') + '\n').join('')
  await copyScenario(ctx, i, rows, '', Buffer.from(data, 'utf8'), copyLines)
})

// 11. COPY in CSV, with quoted fields containing a comma and quotes.
scenario('copy_csv', async (ctx) => {
  const i = 11
  const [lo, hi] = range(i)
  const special = { 2: 'Smith, John', 4: 'say "hi", then go', 9: 'ünï, cødé' }
  const rows = Array.from({ length: 20 }, (_, k) => acct(i, k, special[k] ? { owner: special[k] } : {}))
  const data = rows.map((a) => [a.id, csvField(a.owner), a.currency, a.balance].join(',') + '\n').join('')
  await copyScenario(ctx, i, rows, ' WITH (FORMAT csv)', Buffer.from(data, 'utf8'), copyLines)
})

// 12. COPY in binary: the program builds the bytes (signature, flags,
// extension, int8/text/text/numeric fields, trailer) and decodes the output.
scenario('copy_binary', async (ctx) => {
  const i = 12
  const [lo, hi] = range(i)
  const rows = Array.from({ length: 20 }, (_, k) =>
    acct(i, k, k === 3 ? { owner: 'ünïcødé' } : k === 4 ? { balance: '0.00' } : k === 5 ? { balance: '123456789012.05' } : {})
  )
  const extract = (buf) => parseAccountsBinary(buf).map((a) => ({ id: a.id, text: JSON.stringify(a) }))
  await copyScenario(ctx, i, rows, ' WITH (FORMAT binary)', accountsBinary(rows), extract)
})

// 13. LISTEN on one connection, NOTIFY and pg_notify() on another: the
// 'notification' events of the first carry both payloads.
scenario('listen_notify', async (ctx) => {
  const chan = `chan_${BASE}`
  const listener = await ctx.proxy()
  const got = []
  listener.on('notification', (m) => got.push(m))
  try {
    await listener.query(`LISTEN ${chan}`)
  } catch (e) {
    throw new Fail(`LISTEN refused: ${errText(e)}`)
  }
  const notifier = await ctx.proxy()
  // A proxy pooling LISTEN's server connection may hand the notifications to another client.
  const elsewhere = []
  notifier.on('notification', (m) => elsewhere.push(m))
  await notifier.query(`NOTIFY ${chan}, 'hello'`)
  await notifier.query('SELECT pg_notify($1, $2)', [chan, 'payload via pg_notify'])
  const end = Date.now() + 10000
  while (got.length < 2 && Date.now() < end) await sleep(50)
  const payloads = got.filter((m) => m.channel === chan).map((m) => m.payload)
  if (!isDeepStrictEqual(payloads, ['hello', 'payload via pg_notify'])) {
    const astray = elsewhere.length ? `; the notifying connection received ${JSON.stringify(elsewhere.map((m) => m.payload))} instead` : ''
    throw new Fail(`notifications on ${chan} within 10 s: expected ["hello","payload via pg_notify"], found ${JSON.stringify(payloads)}${astray}`)
  }
  await listener.query(`UNLISTEN ${chan}`)
})

// 14. A CancelRequest with the BackendKeyData the proxy gave (processID,
// secretKey) cancels pg_sleep(30); statement_timeout cancels pg_sleep(5).
scenario('cancel_timeout', async (ctx) => {
  const c = await ctx.proxy()
  if (!c.processID) throw new Fail(`no BackendKeyData: processID ${c.processID}, secretKey ${c.secretKey}`)
  const sleeping = c.query('SELECT pg_sleep(30)')
  sleeping.catch(() => {}) // handled below
  await sleep(500)
  const cancelledAt = Date.now()
  await sendCancel(c.processID, c.secretKey)
  ctx.step('waiting for the cancelled pg_sleep(30)')
  const e = await within(5000, 'pg_sleep(30) after CancelRequest', expectError('cancelled pg_sleep(30)', '57014', sleeping))
  log(`cancel_timeout: cancelled after ${Date.now() - cancelledAt} ms: ${errText(e)}`)
  expectEq('SELECT 1 after the cancel', [{ one: 1 }], (await c.query('SELECT 1 AS one')).rows)

  await c.query('SET statement_timeout = 300')
  const started = Date.now()
  await within(4000, 'pg_sleep(5) under statement_timeout = 300', expectError('pg_sleep(5) with statement_timeout = 300', '57014', c.query('SELECT pg_sleep(5)')))
  log(`cancel_timeout: statement_timeout fired after ${Date.now() - started} ms`)
  await c.query('RESET statement_timeout')
  expectEq('SELECT 1 after RESET statement_timeout', [{ one: 1 }], (await c.query('SELECT 1 AS one')).rows)
  // The timeout is really gone: a 0.5 s statement completes.
  await c.query('SELECT pg_sleep(0.5)')
})

// 15. Every column type as a parameter (pg's own value serialisation:
// objects as JSON, arrays, Buffer as binary bytea, Date), read back inside a
// transaction and parsed by pg's type parsers; plus a row of NULLs.
scenario('types', async (ctx) => {
  const i = 15
  const sent = {
    j: { a: 1, b: [true, null, 'x'], 'ü': 'ä "q"' },
    jb: { nested: { k: [1, 2.5, 'three'] }, empty: {}, s: 'tab\there' },
    ints: [1, -2, 2147483647],
    texts: ['plain', 'with,comma', 'with "quote"', null, 'ü{}\\'],
    n: '123456789012345678901234.567890',
    ts: new Date('2024-02-29T23:59:58.123Z'),
    d: '2024-02-29',
    b: Buffer.from(Array.from({ length: 256 }, (_, n) => n)),
    u: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    f: 0.1 + 0.2,
    flag: false,
  }
  const cols = Object.keys(sent)
  const insert = `INSERT INTO typed (id, ${cols.join(', ')}) VALUES ($1, ${cols.map((_, n) => `$${n + 2}`).join(', ')})`
  const c = await ctx.proxy()
  const r1 = await c.query(insert, [key(i, 0), ...cols.map((k) => sent[k])])
  expectEq('INSERT typed rowCount', 1, r1.rowCount)
  const r2 = await c.query(insert, [key(i, 1), ...cols.map(() => null)])
  expectEq('INSERT typed NULLs rowCount', 1, r2.rowCount)

  await c.query('BEGIN')
  const select = `SELECT ${cols.join(', ')} FROM typed WHERE id = $1`
  const got = (await c.query(select, [key(i, 0)])).rows
  const nulls = (await c.query(select, [key(i, 1)])).rows
  await c.query('COMMIT')
  if (got.length !== 1) throw new Fail(`typed row read back: ${got.length} rows`)
  const row = got[0]
  const ymd = (dt) => `${dt.getFullYear()}-${String(dt.getMonth() + 1).padStart(2, '0')}-${String(dt.getDate()).padStart(2, '0')}`
  const comparable = {
    ts: (v) => (v instanceof Date ? v.getTime() : v),
    d: (v) => (v instanceof Date ? ymd(v) : v),
    b: (v) => (Buffer.isBuffer(v) ? v.toString('hex') : v),
  }
  const wrong = []
  for (const k of cols) {
    const norm = comparable[k] || ((v) => v)
    if (!isDeepStrictEqual(norm(sent[k]), norm(row[k]))) wrong.push(`${k}: sent ${JSON.stringify(norm(sent[k]))}, read ${JSON.stringify(norm(row[k]))}`)
  }
  if (nulls.length !== 1) wrong.push(`NULL row read back: ${nulls.length} rows`)
  else for (const k of cols) if (nulls[0][k] !== null) wrong.push(`NULL ${k} read as ${JSON.stringify(nulls[0][k])}`)
  if (wrong.length) throw new Fail(wrong.join('; '))
})

// 16. Catalog introspection as node applications do it (pg_catalog and
// information_schema queries) and the RowDescription pg exposes as fields.
scenario('metadata', async (ctx) => {
  const c = await ctx.proxy()
  const cat = await c.query(
    `SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null
       FROM pg_catalog.pg_attribute a
       JOIN pg_catalog.pg_class cl ON cl.oid = a.attrelid
       JOIN pg_catalog.pg_namespace ns ON ns.oid = cl.relnamespace
      WHERE cl.relname = $1 AND ns.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
      ORDER BY a.attnum`,
    ['accounts']
  )
  expectEq('pg_attribute of accounts', [
    { name: 'id', type: 'bigint', not_null: true },
    { name: 'owner', type: 'text', not_null: true },
    { name: 'currency', type: 'text', not_null: true },
    { name: 'balance', type: 'numeric(14,2)', not_null: true },
  ], cat.rows)
  const info = await c.query(
    `SELECT column_name::text, data_type::text, ordinal_position::int FROM information_schema.columns
      WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position`,
    ['accounts']
  )
  expectEq('information_schema.columns of accounts', [
    { column_name: 'id', data_type: 'bigint', ordinal_position: 1 },
    { column_name: 'owner', data_type: 'text', ordinal_position: 2 },
    { column_name: 'currency', data_type: 'text', ordinal_position: 3 },
    { column_name: 'balance', data_type: 'numeric', ordinal_position: 4 },
  ], info.rows)
  const tables = await c.query(
    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND table_name = $1",
    ['accounts']
  )
  expectEq('information_schema.tables', [{ table_name: 'accounts' }], tables.rows)
  const empty = await c.query('SELECT * FROM accounts WHERE false')
  expectEq('result fields of SELECT * FROM accounts', [['id', 20], ['owner', 25], ['currency', 25], ['balance', 1700]],
    empty.fields.map((f) => [f.name, f.dataTypeID]))
})

// 17. SET shardgate.consistency = session: each autocommit INSERT is seen
// at once by the next SELECT on the same connection.
scenario('read_your_writes', async (ctx) => {
  if (TOPOLOGY === 'single' && !DIRECT) return 'skipped in single'
  const i = 17
  const c = await ctx.proxy()
  await c.query('SET shardgate.consistency = session')
  const missed = []
  for (let k = 0; k < 20; k++) {
    const a = acct(i, k)
    await c.query(INSERT_ACCOUNT, acctValues(a))
    const r = await c.query('SELECT owner FROM accounts WHERE id = $1', [a.id])
    if (!isDeepStrictEqual(r.rows, [{ owner: a.owner }])) missed.push(`${a.id}: ${JSON.stringify(r.rows)}`)
  }
  if (missed.length) throw new Fail(`${missed.length} of 20 writes not seen at once: ${firstFew(missed, 3)}`)
})

// 18. Aggregates, GROUP BY, ORDER BY/LIMIT/OFFSET and a join with the
// reference table over both shards, as a simple query (literals) and as a
// named prepared statement, compared to the reference database.
scenario('cross_shard_read', async (ctx) => {
  const [lo, hi] = range(CURSOR_I)
  const rows = await loadCursorRows(ctx)
  const queries = {
    aggregates: 'SELECT count(*), sum(balance), min(id), max(id) FROM accounts WHERE id BETWEEN $1 AND $2',
    group_by: 'SELECT currency, count(*) FROM accounts WHERE id BETWEEN $1 AND $2 GROUP BY currency ORDER BY currency',
    limit_offset: 'SELECT id FROM accounts WHERE id BETWEEN $1 AND $2 ORDER BY balance DESC, id LIMIT 5 OFFSET 2',
    join: `SELECT a.id, a.currency, c.name FROM accounts a JOIN currencies c ON c.code = a.currency
            WHERE a.id BETWEEN $1 AND $2 ORDER BY a.id`,
    grouped_subquery: 'SELECT s.currency, s.n, s.total FROM (SELECT currency, count(*) AS n, sum(balance) AS total FROM accounts WHERE id BETWEEN $1 AND $2 GROUP BY currency) s ORDER BY s.currency',
  }
  const reference = await withRefRows(ctx, lo, hi, rows, async (r) => {
    const out = {}
    for (const [name, sql] of Object.entries(queries)) out[name] = (await r.query(sql, [lo, hi])).rows
    return out
  })
  const c = await ctx.proxy()
  for (const [name, sql] of Object.entries(queries)) {
    const literal = sql.replace('$1', String(lo)).replace('$2', String(hi))
    const runs = {
      plain: () => c.query(literal),
      prepared: () => c.query({ name: `q_${name}`, text: sql, values: [lo, hi] }),
    }
    for (const [how, run] of Object.entries(runs)) {
      await settle(async () => {
        const got = (await run()).rows
        return isDeepStrictEqual(got, reference[name])
          ? null
          : `${name} (${how}): expected ${JSON.stringify(reference[name]).slice(0, 250)}, found ${JSON.stringify(got).slice(0, 250)}`
      })
    }
  }
})

// 19. A client killed (SIGKILL) inside a transaction: its uncommitted
// INSERT disappears and no backend stays idle in transaction.
scenario('client_killed', async (ctx) => {
  const k = key(19, 0)
  const child = spawn(process.execPath, [__filename, 'hold', String(k)], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  ctx.children.push(child)
  let out = ''
  let err = ''
  child.stderr.on('data', (d) => (err += d))
  const ready = new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => {
      out += d
      if (out.includes('READY')) resolve()
    })
    child.on('exit', (code, sig) => reject(new Fail(`child ended (${code || sig}) before READY: ${err.trim().slice(-300)}`)))
  })
  ready.catch(() => {})
  await within(15000, 'child READY', ready)
  // The check below can fail: the child's transaction is open on a primary now.
  const before = await idleInTransaction(ctx)
  if (!before.length) throw new Fail('no session idle in transaction on any primary while the child holds its transaction')
  child.kill('SIGKILL')
  const end = Date.now() + 10000
  let left
  let present
  for (;;) {
    left = await idleInTransaction(ctx)
    present = (await primaryAccounts(ctx, k, k)).byId.size
    if ((!left.length && !present) || Date.now() > end) break
    await sleep(200)
  }
  const problems = []
  if (present) problems.push(`row ${k} present on a primary`)
  if (left.length) problems.push(`idle in transaction: ${left.join(', ')}`)
  if (problems.length) throw new Fail(`10 s after SIGKILL: ${problems.join('; ')} (before the kill: ${before.join(', ')})`)
})

/** The child of client_killed: a transaction holding an INSERT of `k`, then sleep. */
async function hold(k) {
  const client = new pg.Client({ host: HOST, port: PORT, user: USER, password: PASSWORD, database: DATABASE, application_name: 'conformance-node-hold' })
  client.on('error', (e) => log(`hold: ${errText(e)}`))
  await client.connect()
  await client.query('BEGIN')
  await client.query(INSERT_ACCOUNT, [k, 'held', 'USD', '1.00'])
  process.stdout.write('READY\n')
  setInterval(() => {}, 1000)
}

// 20. The backend behind the client's connection is terminated on its
// primary: the next statements on the same pg.Client all succeed.
scenario('backend_terminated', async (ctx) => {
  const i = 20
  // Where sharded, the write goes to the shard whose backend is terminated.
  let probeWhere = null
  const probes = Array.from({ length: 10 }, (_, k) => key(i, 100 + k))
  if (PRIMARIES.length > 1 && !DIRECT) probeWhere = await shardsOf(ctx, probes)
  const c = await ctx.proxy()
  const r = await c.query('/* shardgate: consistency=strong */ SELECT pg_backend_pid() AS pid')
  const pid = r.rows[0].pid
  let terminated = null
  let victim = 0
  for (const [n, [addr, p]] of (await ctx.primaries()).entries()) {
    const t = await p.query('SELECT pg_terminate_backend(pid) AS t FROM pg_stat_activity WHERE pid = $1 AND datname = $2', [pid, DATABASE])
    if (t.rows.length) {
      terminated = `${addr} pid ${pid}: ${t.rows[0].t}`
      victim = n
    }
  }
  if (!terminated || !terminated.endsWith('true')) throw new Fail(`pg_backend_pid() ${pid}: not terminated on any primary (${terminated})`)
  await sleep(200)
  const onVictim = probeWhere ? probes.find((id) => probeWhere.get(id) === victim) : undefined
  const a = onVictim === undefined ? acct(i, 0) : acct(i, onVictim - key(i, 0))
  const statements = [
    ['SELECT 1', () => c.query('SELECT 1 AS one'), (x) => isDeepStrictEqual(x.rows, [{ one: 1 }])],
    ['INSERT', () => c.query(INSERT_ACCOUNT, acctValues(a)), (x) => x.rowCount === 1],
    ['SELECT $1::int', () => c.query('SELECT $1::int AS v', [42]), (x) => isDeepStrictEqual(x.rows, [{ v: 42 }])],
    ['UPDATE', () => c.query('UPDATE accounts SET balance = $2 WHERE id = $1', [a.id, '9.99']), (x) => x.rowCount === 1],
    ["SELECT 'done'", () => c.query("SELECT 'done'::text AS s"), (x) => isDeepStrictEqual(x.rows, [{ s: 'done' }])],
  ]
  // Every statement is tried (each outcome reported) while the client is usable.
  const failed = []
  for (const [n, [label, run, check]] of statements.entries()) {
    let res
    try {
      res = await run()
    } catch (e) {
      if (DIRECT && n === 0) return `direct: the terminated connection failed as expected (${errText(e)})`
      failed.push(`statement ${n + 1} (${label}): ${errText(e)}`)
      continue
    }
    if (DIRECT) throw new Fail('direct: statement after pg_terminate_backend succeeded: the wrong backend was terminated')
    if (!check(res)) failed.push(`statement ${n + 1} (${label}): unexpected answer ${res.command} ${res.rowCount} ${JSON.stringify(res.rows)}`)
  }
  if (failed.length) throw new Fail(`after terminating ${terminated}: ${failed.join('; ')}`)
  await checkAccounts(ctx, 'the write after the termination', ...range(i), [Object.assign({}, a, { balance: '9.99' })])
})

scenario('multi_statement', async (ctx) => {
  // client.query() without values: one simple-protocol Query message.
  const i = 21
  const ins = (...ks) => `INSERT INTO accounts (id, owner, currency, balance) VALUES ${ks.map((k) => `(${key(i, k)}, 'multi', 'USD', 1)`).join(', ')}`
  const c = await ctx.proxy()
  ctx.at = 'a string of three statements'
  await c.query(`${ins(0)}; ${ins(1, 2)}; UPDATE accounts SET balance = 5 WHERE id = ${key(i, 0)}`)
  ctx.at = 'a string failing in its second statement'
  await expectError('the duplicate in the string', '23505', c.query(`${ins(3)}; ${ins(0)}`))
  const one = await c.query('SELECT 1 AS one')
  if (!isDeepStrictEqual(one.rows, [{ one: 1 }])) throw new Fail(`SELECT 1 after the failed string gave ${JSON.stringify(one.rows)}`)
  const row = (k, balance) => ({ id: key(i, k), owner: 'multi', currency: 'USD', balance })
  await checkAccounts(ctx, 'the strings', ...range(i), [row(0, '5.00'), row(1, '1.00'), row(2, '1.00')])
})

// ================================================================ main

async function runScenario({ name, fn }) {
  const ctx = new Ctx(name)
  let ok = false
  let detail = ''
  let timer
  const started = Date.now()
  try {
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Fail(`timed out after ${SCENARIO_TIMEOUT_MS / 1000} s at: ${ctx.at}`)), SCENARIO_TIMEOUT_MS)
    })
    const run = fn(ctx)
    run.catch(() => {}) // reported through the race below
    const result = await Promise.race([run, timeout])
    ok = true
    detail = typeof result === 'string' ? result : ''
  } catch (e) {
    detail = e instanceof Fail ? e.message : `${errText(e)} (at ${ctx.at})`
    if (!(e instanceof Fail) && !(e && e.code)) log(`${name}:`, e && e.stack)
  } finally {
    clearTimeout(timer)
    await ctx.close()
  }
  log(`${name}: ${ok ? 'ok' : 'FAIL'} in ${Date.now() - started} ms ${detail}`)
  process.stdout.write(JSON.stringify({ scenario: name, ok, detail }) + '\n')
}

async function main() {
  process.on('unhandledRejection', (e) => log('unhandled rejection:', errText(e)))
  process.on('uncaughtException', (e) => log('uncaught exception:', e && e.stack))
  if (process.argv[2] === 'hold') return hold(Number(process.argv[3]))
  log(`topology ${TOPOLOGY}${DIRECT ? ' (direct, no proxy)' : ''}, proxy ${HOST}:${PORT}/${DATABASE}, primaries ${PRIMARIES.join(',')}, key base ${BASE}`)
  try {
    await cleanKeyRange()
  } catch (e) {
    log(`cleaning the key range failed: ${errText(e)}`)
  }
  // SG_ONLY=name,name runs only those scenarios (for debugging by hand; the matrix never sets it).
  const only = (env.SG_ONLY || '').split(',').filter(Boolean)
  for (const s of scenarios) if (!only.length || only.includes(s.name)) await runScenario(s)
  process.exit(0)
}

main().catch((e) => {
  log('fatal:', e && e.stack)
  process.exit(process.argv[2] === 'hold' ? 1 : 0)
})
