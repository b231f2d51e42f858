#!/usr/bin/env node
// The graphile-worker side of the bench's raw drain, run by `bench raw` / `bench all`
// (bench/src/graphile.rs) when `node` and `npm` are on PATH.
//
// Against a database the bench created for it (and drops afterwards), for each concurrency:
// run graphile-worker's migrations, queue N no-op jobs with one `add_jobs` statement (run_at one
// second in the past, as the project's drain queues its jobs), then run a worker with graphile's
// batching on, the configuration of its performance page (`localQueue: { size: 500 }`,
// `completeJobBatchDelay: 0`, `failJobBatchDelay: 0`, prepared statements, a pool of
// concurrency + 1 connections, one of them connected beforehand as the project's drain's pool
// is), and time it on the database's clock from just before the worker starts to the first
// moment no job is left (graphile deletes a job when it completes; completions are batched,
// so "every task succeeded" is not yet "every job completed"). The no-op task receives the
// decoded JSON payload, as the project's no-op handler decodes its own.
//
//   node drain.js --modules <prefix>/node_modules --url postgres://… --jobs 20000 --concurrency 10,24
//
// Prints one JSON line on stdout: {"version", "jobs", "runs": [{concurrency, seconds,
// per_second, all_completed}], "best": {…}}; progress and graphile's warnings go to stderr.
"use strict";

process.env.NO_LOG_SUCCESS = "1"; // graphile logs a line per completed job otherwise

const path = require("path");

function args() {
  const out = { jobs: 20000, concurrency: [10, 24] };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (v === undefined) throw new Error(`${k} needs a value`);
    if (k === "--modules") out.modules = v;
    else if (k === "--url") out.url = v;
    else if (k === "--jobs") out.jobs = Number(v);
    else if (k === "--concurrency") out.concurrency = v.split(",").map(Number);
    else throw new Error(`unknown argument ${k}`);
  }
  if (!out.modules || !out.url) throw new Error("--modules and --url are required");
  if (!(out.jobs > 0) || out.concurrency.some((c) => !(c > 0))) throw new Error("--jobs and --concurrency must be positive");
  return out;
}

async function main() {
  const opts = args();
  const gw = require(path.join(opts.modules, "graphile-worker"));
  const pg = require(path.join(opts.modules, "pg"));
  const version = require(path.join(opts.modules, "graphile-worker", "package.json")).version;
  const logger = new gw.Logger(() => (level, message) => {
    if (level === "error" || level === "warning") console.error(`graphile-worker ${level}: ${message}`);
  });

  await gw.runMigrations({ connectionString: opts.url, logger });
  const admin = new pg.Client({ connectionString: opts.url });
  await admin.connect();
  const now = async () => (await admin.query("select clock_timestamp() as t")).rows[0].t;

  const runs = [];
  try {
    for (const concurrency of opts.concurrency) {
      // Autovacuum is off on the bench's server: start each run from a clean table, as the
      // project's drain does (DELETE, VACUUM (ANALYZE), INSERT, ANALYZE).
      await admin.query("delete from graphile_worker._private_jobs");
      await admin.query("vacuum (analyze) graphile_worker._private_jobs");
      const queued = await admin.query(
        `select count(*)::int as n from graphile_worker.add_jobs(array(
           select row('noop', json_build_object('n', g), null, now() - interval '1 second', null, null, null, null)::graphile_worker.job_spec
           from generate_series(1, $1::int) g))`,
        [opts.jobs],
      );
      if (queued.rows[0].n !== opts.jobs) throw new Error(`queued ${queued.rows[0].n} of ${opts.jobs} jobs`);
      await admin.query("analyze graphile_worker._private_jobs");

      let succeeded = 0;
      let failed = 0;
      let allSucceeded;
      const done = new Promise((resolve) => (allSucceeded = resolve));
      const taskList = {
        noop: async (payload) => {
          if (typeof payload.n !== "number") throw new Error("payload without n");
        },
      };
      // The pool is connected before the clock starts, as the project's drain's is.
      const pgPool = new pg.Pool({ connectionString: opts.url, max: concurrency + 1 });
      pgPool.on("error", (e) => console.error(`graphile drain: idle pool client: ${e.message}`));
      pgPool.on("connect", (client) => client.on("error", (e) => console.error(`graphile drain: pool client: ${e.message}`)));
      (await pgPool.connect()).release();
      const started = await now();
      const runner = await gw.run({
        taskList,
        parsedCronItems: [],
        noHandleSignals: true,
        logger,
        pgPool,
        preset: {
          worker: {
            concurrentJobs: concurrency,
            maxPoolSize: concurrency + 1,
            preparedStatements: true,
            localQueue: { size: 500 },
            completeJobBatchDelay: 0,
            failJobBatchDelay: 0,
          },
        },
      });
      runner.events.on("job:success", () => {
        if (++succeeded === opts.jobs) allSucceeded();
      });
      runner.events.on("job:error", () => {
        if (++failed === 1) allSucceeded();
      });
      const timeout = setTimeout(() => allSucceeded(), 600_000);
      await done;
      clearTimeout(timeout);
      // Completions are batched: wait for the last delete to commit.
      let left = -1;
      let finished = started;
      for (let i = 0; i < 5000; i++) {
        const r = await admin.query("select count(*)::int as n, clock_timestamp() as t from graphile_worker._private_jobs");
        [left, finished] = [r.rows[0].n, r.rows[0].t];
        if (left === 0 || failed > 0) break;
        await new Promise((r) => setTimeout(r, 1));
      }
      await runner.stop();
      await pgPool.end();
      const seconds = Math.max((finished - started) / 1000, 1e-6);
      const run = {
        concurrency,
        seconds,
        per_second: opts.jobs / seconds,
        succeeded,
        failed,
        all_completed: left === 0 && failed === 0 && succeeded === opts.jobs,
      };
      console.error(`  graphile-worker ${version}, concurrency ${concurrency}: ${JSON.stringify(run)}`);
      runs.push(run);
    }
  } finally {
    await admin.end();
  }
  const best = runs.filter((r) => r.all_completed).sort((a, b) => b.per_second - a.per_second)[0] ?? null;
  console.log(JSON.stringify({ version, jobs: opts.jobs, runs, best }));
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`graphile drain: ${e.stack || e}`);
    process.exit(1);
  },
);
