// How trees and results look in a terminal.
import { plural } from '../errors.js';
import type { ProcessInfo, ProcessState, TreeState, TreeStatus } from '../tree.js';

const colours: Record<ProcessState | TreeState, string> = {
  running: '\x1b[32m',
  stopped: '\x1b[33m',
  traced: '\x1b[35m',
  dead: '\x1b[90m',
  mixed: '\x1b[31m',
  frozen: '\x1b[36m',
};

const ESCAPES: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t', '\\': '\\\\' };

/**
 * `text` with control characters escaped (`\n`, `\x1b` …) and backslashes
 * doubled: a process names itself (comm), and criu logs what it finds, so a
 * name could otherwise draw on the terminal or fake a line of the output.
 */
export function printable(text: string): string {
  return text.replace(/[\x00-\x1f\x7f-\x9f\\]/g, (c) => ESCAPES[c] ?? `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** Each line of a message made printable, the line breaks kept. */
export function printableLines(text: string): string {
  return text.split('\n').map(printable).join('\n');
}

export function paint(text: string, state: ProcessState | TreeState, colour: boolean): string {
  return colour ? `${colours[state]}${text}\x1b[0m` : text;
}

/** A pstree-like drawing, each process with its state (and its threads' when they differ). */
export function drawTree(status: TreeStatus, colour: boolean): string {
  const byPid = new Map(status.processes.map((p) => [p.pid, p]));
  const lines: string[] = [];
  const label = (p: ProcessInfo) => {
    const threads = p.threads.length > 1 ? `, ${p.threads.length} threads` : '';
    const detail = p.state === 'mixed' || p.state === 'traced' ? ` ${p.threads.map((t) => `${t.tid}:${t.state}${t.tracerPid ? `<${t.tracerPid}` : ''}`).join(' ')}` : '';
    return `${p.pid} ${printable(p.comm)} ${paint(`[${p.state}]`, p.state, colour)}${threads}${detail}`;
  };
  const visit = (pid: number, prefix: string, last: boolean, top: boolean) => {
    const p = byPid.get(pid);
    if (!p) return;
    lines.push(top ? label(p) : `${prefix}${last ? '└─ ' : '├─ '}${label(p)}`);
    const kids = p.children.filter((c) => byPid.has(c));
    const next = top ? '' : `${prefix}${last ? '   ' : '│  '}`;
    kids.forEach((c, i) => visit(c, next, i === kids.length - 1, false));
  };
  visit(status.root, '', true, true);
  return lines.join('\n');
}

export function summary(status: TreeStatus, colour: boolean): string {
  const threads = status.processes.reduce((n, p) => n + p.threads.length, 0);
  const kept = status.keptStopped?.length ? `; kept stopped, as the application stopped ${status.keptStopped.length === 1 ? 'it' : 'them'}: ${status.keptStopped.join(', ')}` : '';
  return `${status.root}: ${paint(status.state, status.state, colour)} (${plural(status.processes.length, 'process')}, ${plural(threads, 'thread')}${kept})`;
}
