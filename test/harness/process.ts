import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';

/** A child process did not become ready, or died while we waited for it. */
export class ProcessNotReadyError extends Error {
  override readonly name = 'ProcessNotReadyError';
  readonly code = 'ERR_HARNESS_PROCESS_NOT_READY';
}

/** A short-lived command (skopeo, umoci, ctr, htpasswd, openssl) exited non-zero or timed out. */
export class CommandFailedError extends Error {
  override readonly name = 'CommandFailedError';
  readonly code = 'ERR_HARNESS_COMMAND_FAILED';
  constructor(
    message: string,
    readonly stdout: string,
    readonly stderr: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** A polled condition stayed false until its deadline. */
export class WaitTimeoutError extends Error {
  override readonly name = 'WaitTimeoutError';
  readonly code = 'ERR_HARNESS_WAIT_TIMEOUT';
}

export interface WaitForOptions {
  /** Shown in the error, e.g. "registry at http://127.0.0.1:5000/v2/ to answer". */
  description: string;
  timeoutMs?: number;
  intervalMs?: number;
  /** Stops waiting early, rejecting with the signal's reason (e.g. "the process exited"). */
  signal?: AbortSignal;
}

/**
 * Polls `condition` until it returns true. This is how the harness synchronises with other
 * processes: we never sleep for a guessed duration, we ask until the answer is yes or the bound
 * runs out. A condition that throws counts as "not yet" (a refused connection is the normal
 * answer while a server starts); the last such error becomes the timeout's cause.
 */
export async function waitFor(condition: () => Promise<boolean> | boolean, options: WaitForOptions): Promise<void> {
  const { timeoutMs = 15_000, intervalMs = 50 } = options;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    options.signal?.throwIfAborted();
    try {
      if (await condition()) return;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() >= deadline) {
      throw new WaitTimeoutError(`timed out after ${timeoutMs} ms waiting for ${options.description}`, {
        cause: lastError,
      });
    }
    await delay(intervalMs, undefined, { signal: options.signal }).catch(() => undefined);
  }
}

/** True when `url` answers with one of `statuses`; used as a readiness probe. */
export async function httpAnswers(url: string, statuses: readonly number[]): Promise<boolean> {
  const response = await fetch(url, { signal: AbortSignal.timeout(2_000) });
  await response.body?.cancel();
  return statuses.includes(response.status);
}

/** The last `lineCount` lines of a log file, or a note that it cannot be read. */
export async function readLogTail(path: string, lineCount = 40): Promise<string> {
  try {
    const text = await readFile(path, 'utf8');
    return text.split('\n').slice(-lineCount - 1).join('\n');
  } catch (error) {
    return `(cannot read ${path}: ${(error as Error).message})`;
  }
}

export interface RunCommandOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  timeoutMs?: number;
}

export interface CommandOutput {
  stdout: string;
  stderr: string;
}

/**
 * Runs a command to completion and returns its output. Non-zero exit or timeout throws
 * CommandFailedError carrying stderr, so a failing skopeo/ctr call explains itself in the
 * test output.
 */
export function runCommand(command: string, args: readonly string[], options: RunCommandOptions = {}): Promise<CommandOutput> {
  const { timeoutMs = 120_000 } = options;
  return new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      { env: options.env ?? process.env, cwd: options.cwd, timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error) {
          const how = error.killed ? `was killed after ${timeoutMs} ms` : `exited with ${error.code ?? error.signal}`;
          reject(
            new CommandFailedError(`${command} ${args.join(' ')} ${how}\n${stderr.trim()}`, stdout, stderr, { cause: error }),
          );
          return;
        }
        resolve({ stdout, stderr });
      },
    );
  });
}

export interface StartProcessOptions {
  /** Short name for messages, e.g. "registry central". */
  name: string;
  command: string;
  args: readonly string[];
  /** stderr goes here, and stdout too unless `stdoutFile` is given. Appended to, never truncated. */
  logFile: string;
  /** Separate file for stdout, e.g. the registry's access log. */
  stdoutFile?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Readiness probe, polled until true. A throw counts as "not yet". */
  isReady: () => Promise<boolean>;
  readyTimeoutMs?: number;
  /** How long SIGTERM may take before SIGKILL. */
  stopTimeoutMs?: number;
}

export interface ManagedProcess {
  readonly name: string;
  readonly pid: number;
  readonly logFile: string;
  /** Resolves when the process has exited, for whatever reason. */
  readonly exited: Promise<ProcessExit>;
  hasExited(): boolean;
  /** SIGTERM, then SIGKILL after the bound; resolves once the process is gone. Idempotent. */
  stop(): Promise<ProcessExit>;
}

export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

// Every child still running when the test process exits gets SIGKILL, so a test that forgot
// stop(), or threw before reaching it, never leaves a registry or containerd behind.
const runningChildren = new Set<ChildProcess>();
let exitHookInstalled = false;
function killChildrenOnExit(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of runningChildren) child.kill('SIGKILL');
  });
}

/**
 * Spawns a long-running program with its output in files under the test's temp dir and
 * resolves once `isReady` says so. If the program exits first or the bound runs out, it is
 * stopped and the error includes the tail of its log.
 */
export async function startProcess(options: StartProcessOptions): Promise<ManagedProcess> {
  const { name, readyTimeoutMs = 20_000, stopTimeoutMs = 5_000 } = options;
  killChildrenOnExit();

  // The child writes straight into the files: no pipe for us to drain, nothing lost if we crash.
  const logFd = openSync(options.logFile, 'a');
  const stdoutFd = options.stdoutFile === undefined ? logFd : openSync(options.stdoutFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(options.command, options.args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ['ignore', stdoutFd, logFd],
    });
  } finally {
    closeSync(logFd);
    if (stdoutFd !== logFd) closeSync(stdoutFd);
  }
  runningChildren.add(child);

  let exitInfo: ProcessExit | undefined;
  const exited = new Promise<ProcessExit>((resolve) => {
    const finish = (info: ProcessExit): void => {
      if (exitInfo) return;
      exitInfo = info;
      runningChildren.delete(child);
      resolve(info);
    };
    child.once('exit', (code, signal) => finish({ code, signal }));
    // A child that could not be spawned (ENOENT, EACCES) emits 'error' and never 'exit'.
    child.once('error', () => {
      if (child.pid === undefined) finish({ code: null, signal: null });
    });
  });
  const spawnError = await new Promise<Error | undefined>((resolve) => {
    child.once('spawn', () => resolve(undefined));
    child.once('error', resolve);
  });
  if (spawnError) {
    throw new ProcessNotReadyError(`${name} (${options.command}) could not be spawned: ${spawnError.message}`, { cause: spawnError });
  }

  const stop = async (): Promise<ProcessExit> => {
    if (exitInfo) return exitInfo;
    child.kill('SIGTERM');
    // Unreferenced, so a pending bound does not keep the test process alive after the exit.
    const exitedInTime = await Promise.race([exited.then(() => true), delay(stopTimeoutMs, false, { ref: false })]);
    if (!exitedInTime) child.kill('SIGKILL');
    return exited;
  };

  const failStart = async (reason: string, cause?: unknown): Promise<never> => {
    await stop();
    const tail = await readLogTail(options.logFile);
    throw new ProcessNotReadyError(`${name} (${options.command}) ${reason}; log ${options.logFile} ends with:\n${tail}`, {
      cause,
    });
  };

  const exitedEarly = new AbortController();
  void exited.then(() => exitedEarly.abort(new Error('process exited')));
  try {
    await waitFor(options.isReady, {
      description: `${name} to become ready`,
      timeoutMs: readyTimeoutMs,
      signal: exitedEarly.signal,
    });
  } catch (error) {
    if (exitInfo) return failStart(`exited before it was ready (code ${exitInfo.code}, signal ${exitInfo.signal})`, error);
    return failStart(`was not ready within ${readyTimeoutMs} ms`, error);
  }

  return {
    name,
    pid: child.pid!,
    logFile: options.logFile,
    exited,
    hasExited: () => exitInfo !== undefined,
    stop,
  };
}
