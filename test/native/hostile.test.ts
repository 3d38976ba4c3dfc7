/**
 * The native addon against hostile callers (issue 13), each case in a child process: a wrong
 * answer here is a SIGBUS or SIGSEGV, not an exception. These need the addon, not /dev/kvm:
 * run-on-a-non-vCPU, mappings that are not read-write, getters that swap the fd under a call,
 * fds closed or reused behind the addon's back.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { addonCandidates } from '../../lib/raw/native.js';

const root = path.resolve(import.meta.dirname, '..', '..');
const addonPath = addonCandidates().find((f) => existsSync(f));

describe('native addon against hostile callers', () => {
  test('the addon is built (these cases load it directly)', () => {
    expect(addonPath, `none of ${addonCandidates().join(', ')}`).toBeDefined();
  });
  let dir: string;
  let victim: string;
  const CONTENT = Buffer.alloc(8192, 0x5a);
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'kvm-gmem-hostile-'));
    victim = path.join(dir, 'victim.bin');
  });
  beforeEach(() => writeFileSync(victim, CONTENT));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** Runs an ESM script (after PRELUDE) in a fresh node; `nofile`: its RLIMIT_NOFILE. */
  function child(script: string, options: { nofile?: number; timeout?: number } = {}) {
    const args = ['--input-type=module', '-e', PRELUDE + script];
    const r = options.nofile
      ? spawnSync('/bin/sh', ['-c', `ulimit -n ${options.nofile} && exec "$0" "$@"`, process.execPath, ...args], opts(options.timeout))
      : spawnSync(process.execPath, args, opts(options.timeout));
    const tail = (s: string) => s.split('\n').slice(-25).join('\n');
    const last = r.stderr.split('\n').filter((l) => l.startsWith('#')).pop();
    return {
      status: r.status, signal: r.signal, stdout: r.stdout,
      lines: r.stdout.split('\n').filter(Boolean),
      why: `child exited with status ${r.status}, signal ${r.signal}${last ? `, during ${last}` : ''}\n--- stderr ---\n${tail(r.stderr)}\n--- stdout ---\n${tail(r.stdout)}`,
    };
  }
  const opts = (timeout = 60_000) => ({
    cwd: root, encoding: 'utf8' as const, timeout, maxBuffer: 16 << 20,
    env: { ...process.env, ADDON: addonPath!, VICTIM: victim },
  });

  const PRELUDE = `
    import { createRequire } from 'node:module';
    import fs from 'node:fs';
    const require = createRequire(import.meta.url);
    const a = require(process.env.ADDON);
    class KvmError extends Error { constructor(message, init) { super(message); Object.assign(this, init); } }
    a.setErrorClass(KvmError);
    const classify = (e) => e instanceof KvmError ? 'KvmError ' + e.code : e instanceof TypeError ? 'TypeError' : e instanceof RangeError ? 'RangeError' : 'UNEXPECTED ' + (e?.constructor?.name ?? typeof e) + ': ' + (e?.message ?? String(e));
    const attempt = (f) => { try { f(); return 'ok'; } catch (e) { return classify(e); } };
    const step = (label) => fs.writeSync(2, '#' + label + '\\n');
    const victim = process.env.VICTIM;
    const original = fs.readFileSync(victim);
    const untouched = () => Buffer.compare(original, fs.readFileSync(victim)) === 0;
  `;

  const expectClean = (r: ReturnType<typeof child>) => {
    expect(r.signal, r.why).toBeNull();
    expect(r.status, r.why).toBe(0);
    expect(r.stdout, r.why).toMatch(/^survived$/m);
    expect(r.stdout, r.why).not.toMatch(/UNEXPECTED/);
  };

  test('1. run(fd, area) on an addon fd that is not a vCPU (a regular file or memfd, and a 4 KiB mapping of it) is refused; kick() never writes anywhere', () => {
    const r = child(`
      const fd = a.open(victim);
      const fileArea = a.mmap(fd, 4096, 0, 3, 1);
      const mfd = a.memfdCreate('not a vCPU');
      a.ftruncate(mfd, 8192);
      const memfdArea = a.mmap(mfd, 8192, 0, 3, 1);
      const cases = [['a regular file with its own mapping', fd, fileArea], ['a memfd with its own mapping', mfd, memfdArea], ['a regular file with a memfd mapping', fd, memfdArea]];
      for (const [name, f, area] of cases) {
        let r;
        step('run(' + name + ')');
        console.log('run ' + name + ' -> ' + attempt(() => { r = a.run(f, area); }));
        if (!r) continue;
        step('kick(' + name + ')');
        console.log('kick ' + name + ' -> ' + attempt(() => a.kick(r.token)));
        console.log('done ' + name + ' -> ' + await r.done);
      }
      for (const [name, t] of [['{}', {}], ['a null-prototype object', Object.create(null)], ['a mapping address', fileArea], ['a function', a.kick]]) {
        step('kick(' + name + ')');
        console.log('kick forged ' + name + ' -> ' + attempt(() => a.kick(t)));
      }
      console.log('memfd byte 1: ' + new Uint8Array(a.mappingBuffer(memfdArea))[1]);
      a.munmap(fileArea); a.munmap(memfdArea); a.close(fd); a.close(mfd);
      console.log('file untouched: ' + untouched());
      console.log('survived');
      process.exit(0);
    `);
    expectClean(r);
    expect(r.lines.filter((l) => l.startsWith('run '))).toEqual([
      'run a regular file with its own mapping -> KvmError EINVAL',
      'run a memfd with its own mapping -> KvmError EINVAL',
      'run a regular file with a memfd mapping -> KvmError EINVAL',
    ]);
    expect(r.lines.filter((l) => l.startsWith('kick forged')).map((l) => l.split(' -> ')[1])).toEqual(['TypeError', 'TypeError', 'TypeError', 'TypeError']);
    expect(r.lines).toContain('memfd byte 1: 0'); // immediate_exit was never written
    expect(r.lines).toContain('file untouched: true');
  });

  test('2. mmap with PROT_READ, PROT_NONE or PROT_WRITE alone, then mappingBuffer(): EACCES, never a buffer', () => {
    const r = child(`
      const mfd = a.memfdCreate('read-only');
      a.ftruncate(mfd, 8192);
      const fd = a.open(victim);
      for (const [prot, p] of [['PROT_READ', 1], ['PROT_NONE', 0], ['PROT_WRITE', 2]]) {
        for (const [what, f, flags] of [['memfd', mfd, 1], ['anonymous', -1, 0x21], ['regular file', fd, 1]]) {
          const m = a.mmap(f, 8192, 0, p, flags);
          step('mappingBuffer(' + what + ' ' + prot + ')');
          console.log(what + ' ' + prot + ' buffer -> ' + attempt(() => a.mappingBuffer(m)));
          step('mappingBuffer(' + what + ' ' + prot + ', 0, 4096)');
          console.log(what + ' ' + prot + ' window -> ' + attempt(() => a.mappingBuffer(m, 0, 4096)));
          a.munmap(m);
        }
      }
      const rw = a.mmap(mfd, 8192, 0, 3, 1);
      console.log('read-write buffer ' + a.mappingBuffer(rw).byteLength);
      a.munmap(rw); a.close(mfd); a.close(fd);
      console.log('file untouched: ' + untouched());
      console.log('survived');
    `);
    expectClean(r);
    const answers = r.lines.filter((l) => / (buffer|window) -> /.test(l));
    expect(answers).toHaveLength(18);
    expect(answers.filter((l) => !l.endsWith('-> KvmError EACCES'))).toEqual([]);
    expect(r.lines).toContain('read-write buffer 8192');
    expect(r.lines).toContain('file untouched: true');
  });

  test('3. a getter in a struct argument closes the fd and opens a regular file at the same number (RLIMIT_NOFILE 64: no fd range): the ioctl fails cleanly, the file is untouched', () => {
    const r = child(`
      const calls = {
        setUserMemoryRegion: (fd, o) => a.setUserMemoryRegion(fd, o),
        // The addon takes this one's fields flat (lib/raw/native.ts reads them first, as here).
        setUserMemoryRegion2: (fd, o) => a.setUserMemoryRegion2(fd, o.slot, o.flags, o.guestPhysAddr, o.memorySize, o.userspaceAddr, o.guestMemfdOffset, o.guestMemfd),
        setMemoryAttributes: (fd, o) => a.setMemoryAttributes(fd, o),
        preFaultMemory: (fd, o) => a.preFaultMemory(fd, o),
        enableCap: (fd, o) => a.enableCap(fd, 233, o),
      };
      for (const [name, call] of Object.entries(calls)) {
        for (const reopen of ['through the addon', 'behind its back (fs.openSync)']) {
          const target = a.memfdCreate('target');
          let reopened;
          const swap = () => {
            if (reopened !== undefined) return;
            a.close(target);
            reopened = reopen === 'through the addon' ? a.open(victim) : fs.openSync(victim, 'r+');
          };
          const arg = name === 'enableCap'
            ? Object.defineProperty([], 0, { enumerable: true, get: () => (swap(), 0n) })
            : { get slot() { swap(); return 0; }, get address() { swap(); return 0n; }, get gpa() { swap(); return 0n; },
                flags: 0, guestPhysAddr: 0n, memorySize: 4096n, userspaceAddr: 0n, size: 4096n, attributes: 0n };
          step(name + ' (reopened ' + reopen + ')');
          const o = attempt(() => call(target, arg));
          console.log(name + ', reopened ' + reopen + ': same number ' + (reopened === target) + ' -> ' + o);
          if (reopen === 'through the addon') a.close(reopened); else fs.closeSync(reopened);
        }
      }
      console.log('file untouched: ' + untouched() + ', size ' + fs.statSync(victim).size);
      console.log('survived');
    `, { nofile: 64 });
    expectClean(r);
    const answers = r.lines.filter((l) => l.includes(': same number '));
    expect(answers).toHaveLength(10);
    for (const l of answers) expect(l).toMatch(/same number true -> KvmError (EBADF|ENOTTY|EINVAL)$/);
    expect(r.lines).toContain(`file untouched: true, size ${CONTENT.length}`);
  });

  test.each([[64], [undefined]] as const)('4b. an fd closed behind the addon’s back whose number another file gets (RLIMIT_NOFILE %s): EBADF, the new file untouched', (nofile) => {
    const r = child(`
      const scratch = victim + '.scratch'; fs.writeFileSync(scratch, '');
      const fd = a.open(scratch); fs.closeSync(fd);
      const fillers = []; let n;
      while ((n = fs.openSync('/dev/null', 'r')) < fd) fillers.push(n);
      fs.closeSync(n);
      const reused = fs.openSync(victim, 'r+');
      console.log('number reused: ' + (reused === fd));
      const calls = { ftruncate: () => a.ftruncate(fd, 0), fallocate: () => a.fallocate(fd, 3, 0, 4096), fstat: () => a.fstat(fd),
        mmap: () => { const m = a.mmap(fd, 4096, 0, 3, 1); a.munmap(m); }, close: () => a.close(fd) };
      for (const [name, call] of Object.entries(calls)) { step(name); console.log(name + ' -> ' + attempt(call)); }
      for (const f of fillers) fs.closeSync(f);
      console.log('file untouched: ' + untouched() + ', size ' + fs.statSync(victim).size);
      try { fs.closeSync(reused); } catch {}
      console.log('survived');
    `, nofile ? { nofile } : {});
    expectClean(r);
    expect(r.lines).toContain('number reused: true');
    expect(r.lines.filter((l) => l.includes(' -> ') && !l.endsWith('-> KvmError EBADF'))).toEqual([]);
    expect(r.lines).toContain(`file untouched: true, size ${CONTENT.length}`);
  });

  test('4. an fd closed behind the addon’s back (fs.closeSync), its number not reused: every raw call on it is EBADF, the file untouched', () => {
    const r = child(`
      const fd = a.open(victim);
      const memfd = a.memfdCreate('closed behind its back');
      fs.closeSync(fd);
      fs.closeSync(memfd);
      const other = fs.openSync(victim, 'r');
      console.log('number reused: ' + (other === fd || other === memfd));
      for (const f of [fd, memfd]) {
        const calls = {
          fstat: () => a.fstat(f), ftruncate: () => a.ftruncate(f, 0), fallocate: () => a.fallocate(f, 3, 0, 4096),
          mmap: () => a.mmap(f, 4096, 0, 3, 1), checkExtension: () => a.checkExtension(f, 0),
          setUserMemoryRegion2: () => a.setUserMemoryRegion2(f, 0, 0, 0n, 4096n),
          close: () => a.close(f), 'close again': () => a.close(f),
        };
        for (const [name, call] of Object.entries(calls)) { step(name); console.log(name + ' -> ' + attempt(call)); }
      }
      fs.closeSync(other);
      console.log('file untouched: ' + untouched() + ', size ' + fs.statSync(victim).size);
      console.log('survived');
    `);
    expectClean(r);
    expect(r.lines).toContain('number reused: false');
    const answers = r.lines.filter((l) => l.includes(' -> '));
    expect(answers).toHaveLength(16);
    expect(answers.filter((l) => !l.endsWith('-> KvmError EBADF'))).toEqual([]);
    expect(r.lines).toContain(`file untouched: true, size ${CONTENT.length}`);
  });

  test('5. an fd closed through the addon whose number a new file gets (RLIMIT_NOFILE 64): the old file\'s mappings do not answer for the new one', () => {
    const r = child(`
      const kvm = a.open('/dev/kvm');
      const m1 = a.memfdCreate('old');
      a.ftruncate(m1, 8192);
      const oldMap = a.mmap(m1, 8192, 0, 3, 1);
      a.close(m1);
      const m2 = a.memfdCreate('new');
      console.log('memfd number reused: ' + (m2 === m1));
      step('ftruncate(new memfd)');
      console.log('ftruncate new -> ' + attempt(() => a.ftruncate(m2, 0)));
      console.log('old mapping still reads: ' + new Uint8Array(a.mappingBuffer(oldMap))[4096]);
      a.munmap(oldMap); a.close(m2);
      const vm = a.createVm(kvm, 0);
      const c1 = a.createVcpu(vm, 0);
      const area = a.mmap(c1, a.getVcpuMmapSize(kvm), 0, 3, 1);
      a.close(c1);
      const c2 = a.createVcpu(vm, 1);
      console.log('vcpu number reused: ' + (c2 === c1));
      step('run(new vCPU, old kvm_run)');
      console.log('run with the old area -> ' + attempt(() => a.run(c2, area)));
      a.munmap(area); a.close(c2); a.close(vm); a.close(kvm);
      console.log('survived');
    `, { nofile: 64 });
    expectClean(r);
    expect(r.lines).toContain('memfd number reused: true');
    expect(r.lines).toContain('ftruncate new -> ok');
    expect(r.lines).toContain('old mapping still reads: 0');
    expect(r.lines).toContain('vcpu number reused: true');
    expect(r.lines).toContain('run with the old area -> TypeError');
  });
});
