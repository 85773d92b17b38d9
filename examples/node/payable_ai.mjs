#!/usr/bin/env node
// The Payable-AI loop end to end from Node, on embedded defaults: a datanet of drug facts from
// five contributors (one of whom submits re-worded copies of her records) is published on an
// embedded EVM with a training grant; adapters are fine-tuned on it and registered with their
// training-log heads and fees; the requests are served in one mixed batch, streaming; every
// answer is attributed (training influence + RAG citations), receipted (EIP-712) and paid on
// chain; the epoch closes into a Merkle root every contributor claims from, checked to the wei.
//
//   node examples/node/payable_ai.mjs [--quick] [--steps N] [--work-dir DIR] [--report FILE]
//       [--embedder DIR|none]
//
// Records and answers are embedded by all-MiniLM-L6-v2 when `bash scripts/fetch-models.sh` has
// fetched it (or --embedder names a sentence-transformers folder), otherwise (or with
// `--embedder none`) by a feature-hashing bag of words, which the output says.
//
// Build the addon first (bindings/node: `npm run build`). Progress bars go to stderr, the
// answers and the summary to stdout, the JSON report to --report (default: report.json in the
// work folder). Exits with 1 when a balance does not match its claim or the near-duplicate
// contributor earned more than before splitting.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const { PayableAi } = createRequire(import.meta.url)(join(here, '..', '..', 'bindings', 'node', 'index.js'))

const STAGES = ['publishDatanet', 'fineTune', 'serve', 'attributeAndPay', 'closeEpoch']
const USAGE = 'payable_ai.mjs [--quick] [--steps N] [--work-dir DIR] [--report FILE] [--embedder DIR|none]'

/** all-MiniLM-L6-v2 where `scripts/fetch-models.sh` puts it, when it has. */
function fetchedEmbedder() {
  const dir = join(process.env.OPENLEDGER_MODELS ?? join('target', 'models'), 'all-MiniLM-L6-v2')
  return existsSync(join(dir, '.complete')) ? dir : undefined
}

/** The command line as options; throws on an unknown flag or a missing value. */
export function parseArgs(argv) {
  const a = { quick: false, steps: undefined, workDir: 'target/payable-ai-node', report: undefined, embedder: fetchedEmbedder(), help: false }
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`)
      return argv[++i]
    }
    switch (flag) {
      case '--quick': a.quick = true; break
      case '--steps': {
        const v = value()
        a.steps = Number(v)
        if (!Number.isInteger(a.steps) || a.steps < 1) throw new Error(`--steps ${v}: expected a positive integer`)
        break
      }
      case '--work-dir': a.workDir = value(); break
      case '--report': a.report = value(); break
      case '--embedder': {
        const v = value()
        a.embedder = v === 'none' ? undefined : v
        break
      }
      case '-h': case '--help': a.help = true; break
      default: throw new Error(`unknown argument ${JSON.stringify(flag)} (try --help)`)
    }
  }
  a.report ??= join(a.workDir, 'report.json')
  return a
}

/** Progress bars and streaming answers: on a terminal, bars redraw in place and each request's
 * line grows as its tokens arrive; otherwise each bar prints once, when complete, and the
 * answers appear in the summary. */
class Screen {
  constructor(out, err, tty) {
    Object.assign(this, { out, err, tty, barOpen: false, lines: [], drawn: false })
  }

  event(e) {
    if (e.kind === 'stage') {
      this.closeBar()
      this.out.write(`\n== ${e.name}\n`)
      if (e.name === 'serve' && this.tty) {
        for (const l of this.lines) this.out.write(`${l}\n`)
        this.drawn = true
      }
    } else if (e.kind === 'progress') {
      if (!this.tty && e.done < e.total) return
      const W = 28
      const filled = Math.floor((W * e.done) / Math.max(e.total, 1))
      const loss = e.loss === undefined ? '' : `  loss ${e.loss.toFixed(4).padStart(7)}`
      this.err.write(`\r  [${'#'.repeat(filled)}${'.'.repeat(W - filled)}] ${String(e.done).padStart(4)}/${String(e.total).padEnd(4)} ${e.item}${loss}   `)
      this.barOpen = true
      if (e.done === e.total) this.closeBar()
    } else if (e.kind === 'token') {
      if (this.lines[e.request] === undefined) return
      this.lines[e.request] += ` ${e.text}`
      if (this.drawn) {
        // Up to the request's line, rewrite it, back down.
        const up = this.lines.length - e.request
        this.out.write(`\x1b[${up}A\r\x1b[2K${this.lines[e.request]}\x1b[${up}B\r`)
      }
    }
  }

  closeBar() {
    if (this.barOpen) {
      this.err.write('\n')
      this.barOpen = false
    }
  }
}

const short = (h) => `${h.slice(0, 10)}…${h.slice(-6)}`
const pad = (s, n) => String(s).padEnd(n)
const lpad = (s, n) => String(s).padStart(n)

/** `[[copier, owner], copies]` over the records the datanet stage flagged as copies. */
export function copiesByCopier(d) {
  const by = new Map()
  for (const c of d.copies ?? []) {
    const key = `${c.contributor} ${c.owner}`
    by.set(key, (by.get(key) ?? 0) + 1)
  }
  return [...by].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, n]) => [k.split(' '), n])
}

/** `[copier, owner, paid wei (bigint)]` for everyone who copied someone else's records. */
export function copiersPaid(r) {
  if (!r.datanet || !r.epoch) return []
  const claimed = new Map(r.epoch.contributors.map((c) => [c.account, c.claimed_wei]))
  return copiesByCopier(r.datanet)
    .filter(([[who, owner]]) => who !== owner)
    .map(([[who, owner]]) => [who, owner, BigInt(claimed.get(who) ?? 0n)])
}

/** The summary tables of a finished run. */
export function summary(r, out) {
  const line = (s = '') => out.write(`${s}\n`)
  const name = (a) => r.accounts[a] ?? `${a.slice(0, 6)}…${a.slice(-4)}`
  const d = r.datanet
  if (d) {
    line(`\ndatanet ${JSON.stringify(d.name)} id ${d.id} v${d.version}: ${d.records} records from ${Object.keys(d.contributors).length} contributors, root ${short(d.root)}; ${d.near_duplicate_clusters.length} near-duplicate clusters, ${d.distinct_records} distinct records`)
    line(`  embedder: ${d.embedder}; ${d.paraphrases} clusters joined as paraphrases`)
    for (const [[who, owner], n] of copiesByCopier(d)) {
      const whose = who === owner ? 'their own' : `${name(owner)}'s`
      line(`  flagged: ${n} records of ${name(who)} copy ${whose} earlier records (not trained on, not cited)`)
    }
  }
  line(`\n${pad('adapter', 17)} ${lpad('rank', 5)} ${lpad('params', 7)} ${lpad('loss', 15)} ${lpad('recall', 7)} ${lpad('log head', 17)} ${lpad('artifact', 17)} ${lpad('fee (wei)', 22)}`)
  for (const a of r.adapters) {
    const loss = `${a.first_loss.toFixed(3).padStart(7)}→${a.last_loss.toFixed(3).padEnd(7)}`
    line(`${pad(a.name, 17)} ${lpad(`${a.rank}${a.dora ? 'D' : ''}`, 5)} ${lpad(a.parameters, 7)} ${loss} ${lpad((100 * a.recall).toFixed(0), 6)}% ${lpad(short(a.training_log_head), 17)} ${lpad(short(a.artifact_hash), 17)} ${lpad(a.fee_wei, 22)}`)
  }
  const v = r.validation
  if (v) {
    const flagged = new Map()
    for (const f of v.flagged) flagged.set(name(f.contributor), (flagged.get(name(f.contributor)) ?? 0) + 1)
    const who = [...flagged].sort().map(([n, k]) => `${n} ×${k}`).join(', ') || 'none'
    line(`\nvalidation: influence of ${v.records} trained records on ${v.answers} gold answers; ${v.flagged.length} flagged: ${who}; policy ${v.policy}`)
    if (v.planted) {
      line(`  planted poison: ${v.planted.caught} of ${v.planted.planted} caught, ${v.planted.false_flags} other records flagged, AUC ${v.planted.auc.toFixed(3)}`)
    }
  }
  if (r.reputation?.length) {
    const scores = r.reputation.map((c) => `${c.name} ${c.accepted}/${c.harmful}/${c.copies} → ${c.score.toFixed(2)}`).join(', ')
    line(`reputation (accepted / harmful / copies of others' → the score weights are multiplied by): ${scores}`)
  }
  const s = r.serving
  if (s) {
    line(`\nserved ${s.requests} requests for ${s.adapters} adapters in ${s.engine_steps} engine steps; the first step ran all ${s.first_step_sequences} sequences as one mixed batch`)
  }
  const w = Math.max(7, ...r.requests.map((q) => q.adapter.length))
  line(`\n${pad('#', 3)} ${pad('adapter', w)} ${pad('prompt', 30)} ${pad('answer', 30)} ${pad('top citation', 28)} ${lpad('data pool (wei)', 20)}`)
  for (const q of r.requests) {
    const c = q.citations[0]
    const cite = c ? `${name(c.contributor)} (${(100 * c.share).toFixed(0)}%)` : ''
    line(`${pad(q.index, 3)} ${pad(q.adapter, w)} ${pad(q.prompt, 30)} ${pad(q.answer, 30)} ${pad(cite, 28)} ${lpad(q.data_pool_wei ?? '', 20)}`)
  }
  // Ensembles: the fee is the members' fees weighted, the owners' part split by weight.
  for (const q of r.requests.filter((q) => Object.keys(q.owner_shares_wei ?? {}).length > 1)) {
    const owners = Object.entries(q.owner_shares_wei).map(([a, v]) => `${v} to ${a}'s owner`).join(' + ')
    line(`#${q.index} is an ensemble: fee ${q.fee_wei} wei (the members' fees, weighted), owners ${owners}; its pool's influence part is split between the members by weight, each over its own training records`)
  }
  const e = r.epoch
  if (e) {
    line(`\nepoch ${e.number}: pool ${e.pool_wei} wei, root ${short(e.root)} posted; claims:`)
    line(`${pad('contributor', 11)} ${lpad('records', 7)} ${lpad('claimed (wei)', 22)} ${lpad('balance (wei)', 22)} ${lpad('without copies', 22)} ${lpad('no clustering', 22)}  balance = claim`)
    for (const c of e.contributors) {
      line(`${pad(c.name, 11)} ${lpad(c.records, 7)} ${lpad(c.claimed_wei, 22)} ${lpad(c.balance_wei, 22)} ${lpad(c.before_splitting_wei ?? '-', 22)} ${lpad(c.without_clustering_wei ?? '-', 22)}  ${c.matches ? '✔' : '✘'}`)
    }
    for (const [, who, amount] of e.withdrawn) line(`withdrawn by ${who}: ${amount} wei`)
    line(`left in the contracts: rewards ${e.rewards_left_wei} wei, payments ${e.payments_left_wei} wei; every balance to the wei: ${e.claims_match ? '✔' : '✘'}`)
    for (const d of e.debts ?? []) {
      line(`debt: ${d.name} owes ${d.charged_wei} wei for the harm of its flagged records; ${d.taken_wei} wei taken from its payout, ${d.carried_wei} wei carried`)
    }
    for (const [who, owner, paid] of copiersPaid(r)) {
      line(`copies: ${name(who)} copied ${name(owner)}'s records and was paid ${paid} wei (${paid === 0n ? 'nothing ✔' : '✘'})`)
    }
    const n = e.near_duplicates
    if (n) {
      line(`near-duplicates: ${n.name} earned ${n.paid_wei} wei with her copies, ${n.before_splitting_wei} wei without them (${n.holds ? 'no more ✔' : 'MORE ✘'}), ${n.without_clustering_wei} wei if copies were not clustered`)
    }
  }
  line(`\ntime: ${Object.entries(r.seconds).map(([k, v]) => `${k} ${v.toFixed(1)}s`).join(', ')}`)
}

/**
 * Runs the loop with the command-line arguments `argv`, writing to `io.stdout` / `io.stderr`
 * (default: the process's) and passing every event to `io.onEvent` as well. Resolves to the
 * exit code (0 when every balance matches its claim and the near-duplicate check holds) and the
 * report (amounts as bigints); rejects with the loop's error.
 */
export async function main(argv, io = {}) {
  const out = io.stdout ?? process.stdout
  const err = io.stderr ?? process.stderr
  const a = parseArgs(argv)
  if (a.help) {
    out.write(`${USAGE}\n`)
    return { code: 0, report: undefined }
  }
  const started = Date.now()
  const ai = new PayableAi({ workDir: a.workDir, quick: a.quick, steps: a.steps, embedder: a.embedder })
  const screen = new Screen(out, err, Boolean(io.tty ?? (process.stdout.isTTY && process.stderr.isTTY)))
  const aw = Math.max(...ai.requests.map((q) => q.adapter.length))
  screen.lines = ai.requests.map((q, i) => `  #${pad(i, 2)} ${pad(q.adapter, aw)} ${pad(q.prompt, 28)} →`)
  const onEvent = (e) => {
    screen.event(e)
    io.onEvent?.(e)
  }
  for (const stage of STAGES) await ai[stage](onEvent)
  screen.closeBar()
  const report = ai.report()
  summary(report, out)
  mkdirSync(dirname(resolve(a.report)), { recursive: true })
  writeFileSync(a.report, ai.reportJson())
  out.write(`report: ${a.report} (${((Date.now() - started) / 1000).toFixed(1)} s in all)\n`)
  const e = report.epoch
  if (!e) {
    err.write('the epoch did not close\n')
    return { code: 1, report }
  }
  if (!e.claims_match) {
    err.write('a balance does not match its claim\n')
    return { code: 1, report }
  }
  if (copiersPaid(report).some(([, , paid]) => paid !== 0n)) {
    err.write("a contributor was paid for copies of someone else's records\n")
    return { code: 1, report }
  }
  if (e.near_duplicates && !e.near_duplicates.holds) {
    err.write('the near-duplicate contributor earned more than before splitting\n')
    return { code: 1, report }
  }
  return { code: 0, report }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main(process.argv.slice(2)).then(
    ({ code }) => { process.exitCode = code },
    (e) => {
      process.stderr.write(`\n${e.code ? `${e.code}: ` : ''}${e.message}\n`)
      process.exitCode = 1
    },
  )
}
