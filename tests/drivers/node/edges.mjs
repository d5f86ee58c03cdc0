// Connection edges as node-postgres (pure JavaScript) lives them, printed as one JSON
// object, so the same run against PostgreSQL directly and through the gateway can be
// compared: what the driver reported, in order, and nothing else.
//
//   node edges.mjs <connection string> <direct admin connection string>
//
// The admin connection (directly to PostgreSQL) terminates the driver's backend, as an
// operator would; agents may not signal backends through the gateway.
import pg from 'pg';

const [url, adminUrl] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// A promise the driver never settles is part of what it did, not a hang of this script.
const settled = (p, what) =>
  Promise.race([
    p.then(
      () => what,
      (e) => `rejected ${describe(e)}`,
    ),
    sleep(3000).then(() => 'never settled'),
  ]);
const describe = (e) => (e.code ? `${e.severity ?? ''} ${e.code}: ${e.message}` : e.message);

/// Every event the driver emits about its connection, until it has ended.
function watch(client) {
  const events = [];
  client.on('error', (e) => events.push(`error ${describe(e)}`));
  client.on('notice', (n) => events.push(`notice ${n.message}`));
  client.on('end', () => events.push('end'));
  return events;
}

async function ended(events) {
  for (let i = 0; i < 100 && !events.includes('end'); i++) await sleep(50);
}

async function terminate(pid, state) {
  const admin = new pg.Client(adminUrl);
  await admin.connect();
  try {
    for (let i = 0; i < 200; i++) {
      const r = await admin.query('SELECT state FROM pg_stat_activity WHERE pid = $1', [pid]);
      if (r.rows[0]?.state === state) break;
      await sleep(50);
    }
    const r = await admin.query('SELECT pg_terminate_backend($1) AS ok', [pid]);
    return r.rows[0].ok;
  } finally {
    await admin.end();
  }
}

const results = {};

// An idle session the server terminates.
{
  const c = new pg.Client(url);
  const events = watch(c);
  await c.connect();
  const ok = await terminate(c.processID, 'idle');
  await ended(events);
  results.terminated_idle = { terminated: ok, events };
}

// A session terminated while its statement runs.
{
  const c = new pg.Client(url);
  const events = watch(c);
  await c.connect();
  const running = c.query('SELECT pg_sleep(60)').then(
    () => 'completed',
    (e) => `rejected ${describe(e)}`,
  );
  const ok = await terminate(c.processID, 'active');
  const query = await running;
  await ended(events);
  results.terminated_running = { terminated: ok, query, events };
}

// end() called while connecting: the driver writes Terminate before its start-up packet.
{
  const c = new pg.Client(url);
  const events = watch(c);
  const [connect, end] = await Promise.all([
    settled(c.connect(), 'connected'),
    settled(c.end(), 'ended'),
  ]);
  await sleep(300);
  results.end_during_connect = { connect, end, events };
}

// A query after the server is gone: what the driver itself says.
{
  const c = new pg.Client(url);
  const events = watch(c);
  await c.connect();
  await terminate(c.processID, 'idle');
  await ended(events);
  const after = await c.query('SELECT 1').then(
    () => 'completed',
    (e) => `rejected ${describe(e)}`,
  );
  results.query_after_termination = { after, events };
}

console.log(JSON.stringify(results, null, 1));
