#!/usr/bin/env node
// node-postgres writer for tests/rebalance.rs: writes through shardgate while
// rebalancing jobs move rows and keeps a ledger of what it committed.
// Accounts [SG_KEY_BASE, SG_KEY_BASE + 200) are created with one multi-row
// INSERT; each transfer is BEGIN, a parameterised UPDATE and INSERT queued
// without awaiting (node-postgres pipelines them on one connection), COMMIT;
// then the balance is read back with a named prepared statement. Stops when
// the file SG_STOP exists; creates SG_READY once its accounts exist. Prints
// {"ledger": {id: [balance, entries, sum]}, "errors": [...], "transfers": n}.
'use strict'

const fs = require('fs')
const pg = require('pg')

const env = process.env
const ACCOUNTS = 200
const BASE = Number(env.SG_KEY_BASE)

async function main () {
  const client = new pg.Client({
    host: env.SG_HOST,
    port: Number(env.SG_PORT),
    user: env.SG_USER,
    password: env.SG_PASSWORD,
    database: env.SG_DATABASE
  })
  await client.connect()
  const ledger = {}
  const values = []
  const params = []
  for (let i = 0; i < ACCOUNTS; i++) {
    ledger[BASE + i] = [0, 0, 0]
    params.push(BASE + i)
    values.push(`($${i + 1}, 0)`)
  }
  await client.query(`INSERT INTO accounts (id, balance) VALUES ${values.join(', ')}`, params)
  fs.writeFileSync(env.SG_READY, 'ready\n')
  const errors = []
  let seq = 0
  let x = BASE + 1
  const next = (n) => { x = (x * 1103515245 + 12345) % 2147483648; return x % n }
  while (!fs.existsSync(env.SG_STOP) && errors.length === 0) {
    const k = BASE + next(ACCOUNTS)
    const d = next(100) + 1
    seq++
    try {
      const queued = [
        client.query('BEGIN'),
        client.query('UPDATE accounts SET balance = balance + $1 WHERE id = $2', [d, k]),
        client.query('INSERT INTO entries (account_id, seq, amount) VALUES ($1, $2, $3)', [k, seq, d]),
        client.query('COMMIT')
      ]
      await Promise.all(queued)
    } catch (e) {
      errors.push(`node-postgres transfer on ${k}: ${e.code} ${e.message}`)
      try { await client.query('ROLLBACK') } catch (_) {}
      break
    }
    const e = ledger[k]
    e[0] += d
    e[1] += 1
    e[2] += d
    const r = await client.query({ name: 'balance', text: 'SELECT balance FROM accounts WHERE id = $1', values: [k] })
    const got = Number(r.rows[0].balance)
    if (got !== e[0]) errors.push(`node-postgres read back ${k}: ${got}, wrote ${e[0]}`)
  }
  await client.end()
  process.stdout.write(JSON.stringify({ ledger, errors, transfers: seq }) + '\n')
}

main().catch((e) => {
  process.stderr.write(`${e.stack}\n`)
  process.exit(1)
})
