// Sums the CPU profiles `BENCH_PROFILE=<dir>` wrote (see bench/media.test.ts) by function:
// `node bench/profile-summary.mjs <dir> [top]`, one table per profile, self time in ms.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const [dir, top = '30'] = process.argv.slice(2);
if (!dir) {
  console.error('usage: node bench/profile-summary.mjs <dir> [top]');
  process.exit(2);
}
for (const file of readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).sort()) {
  const profile = JSON.parse(readFileSync(join(dir, file), 'utf8'));
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map();
  profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
  const byFunction = new Map();
  let total = 0;
  let idle = 0;
  for (const [id, us] of selfUs) {
    const { functionName, url, lineNumber } = nodes.get(id).callFrame;
    const name = functionName || '(anonymous)';
    if (name === '(idle)' || name === '(program)') {
      idle += us; // in the header only: shares are of the busy time
      continue;
    }
    total += us;
    const key = `${name} ${url ? `${url.split('/').pop()}:${lineNumber + 1}` : ''}`;
    byFunction.set(key, (byFunction.get(key) ?? 0) + us);
  }
  console.log(`\n${file}: busy ${(total / 1000).toFixed(0)} ms (idle and program ${(idle / 1000).toFixed(0)} ms)`);
  for (const [key, us] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, Number(top))) {
    console.log(`${(us / 1000).toFixed(0).padStart(8)} ${((100 * us) / Math.max(total, 1)).toFixed(1).padStart(5)}%  ${key}`);
  }
}
