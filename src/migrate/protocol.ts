// The conversation between `treestate migrate` (the source) and `treestate
// receive` (the destination, started over ssh): one JSON object per line,
// commands on the receiver's stdin, events on its stdout. Images other than
// memory pages travel in `file` commands (they are small); the pages go
// straight to the receiver's criu page server, or, with --lazy, from the
// source's page server to the receiver's `criu lazy-pages` after the restore.

export type ReceiverCommand =
  | { cmd: 'file'; name: string; data: string } // data: base64
  | {
      cmd: 'restore';
      finalState: 'running' | 'stopped';
      pidNamespace: 'host' | 'new';
      tcpEstablished: boolean;
      shellJob: boolean;
      /** Post-copy: where the source's page server listens. */
      lazy?: { address: string; port: number };
    }
  | { cmd: 'pages' } // --lazy: the source's page server is done; did lazy-pages get every page?
  | { cmd: 'commit' } // the source is dead: keep the restored tree, remove the images
  | { cmd: 'abort' }; // kill what was restored, remove everything

export type ReceiverEvent =
  // `client`: the source's address as this side saw the ssh connection come
  // (the one the source's lazy page server binds); no page server here with --lazy.
  | { event: 'ready'; address: string; port?: number; client?: string; imagesDir: string }
  | { event: 'restored'; root: number; pidNamespace?: { pid: number; init: number }; state: string; pagesBytes: number; elapsedMs: number }
  // --lazy: how criu lazy-pages ended (0: every page arrived).
  | { event: 'pages'; code: number | null; signal: string | number | null }
  | { event: 'done' }
  | { event: 'error'; phase: string; code: string; message: string };

/** Image file names the receiver accepts: no path, no surprise. */
export const IMAGE_NAME = /^[A-Za-z0-9_.-]+\.img$/;
