/**
 * A reporter for long runs (the lab, under TCG): one line per test as it ends, with its time,
 * so a slow or stuck test shows where it is. `--reporter=./test/reporters/progress.ts`.
 */
import type { UserConsoleLog } from 'vitest';
import type { Reporter, TestCase, TestModule } from 'vitest/node';

const mark = { passed: 'ok', failed: 'FAIL', skipped: 'skip', pending: '...' } as const;

export default class ProgressReporter implements Reporter {
  #started = performance.now();

  #elapsed(): string {
    return `${((performance.now() - this.#started) / 1000).toFixed(0).padStart(5)}s`;
  }

  onTestModuleStart(m: TestModule): void {
    process.stdout.write(`${this.#elapsed()} start ${m.project.name} ${m.moduleId.replace(`${process.cwd()}/`, '')}\n`);
  }

  /** What the tests print (the differential's report, measured figures). */
  onUserConsoleLog(log: UserConsoleLog): void {
    process.stdout.write(log.content.replace(/^/gm, '      | '));
  }

  onTestCaseResult(t: TestCase): void {
    const r = t.result();
    const ms = t.diagnostic()?.duration ?? 0;
    const why = r.state === 'failed' ? `: ${r.errors?.[0]?.message?.split('\n')[0] ?? ''}` : r.state === 'skipped' && r.note ? ` (${r.note})` : '';
    process.stdout.write(`${this.#elapsed()} ${mark[r.state]} ${t.module.moduleId.replace(`${process.cwd()}/`, '')} > ${t.fullName} [${ms.toFixed(0)} ms]${why}\n`);
  }
}
