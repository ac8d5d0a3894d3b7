// A buildd client as an IDE plugin would write it, from the .proto alone:
// list interpreters, open a session, hold it with KeepAlive, prepare metadata
// (showing its events), build and download a wheel, handle each error by its
// reason, close. Prints one JSON object per step on stdout.
//
//   node dist/main.js --address unix:///run/user/1000/buildd/buildd.sock \
//     --project /path/to/project --out /tmp/wheels
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

import { actionFor, type CallError, fromFailure, fromServiceError, loadDetailTypes } from './errors';
import type { ProtoGrpcType } from './generated/buildd';
import type { BuilddClient } from './generated/buildd/v1/Buildd';
import type { CloseSessionResponse__Output } from './generated/buildd/v1/CloseSessionResponse';
import type { Distribution } from './generated/buildd/v1/Distribution';
import type { Event__Output } from './generated/buildd/v1/Event';
import type { ListInterpretersResponse__Output } from './generated/buildd/v1/ListInterpretersResponse';
import type { Result__Output } from './generated/buildd/v1/Result';
import type { SessionInfo__Output } from './generated/buildd/v1/SessionInfo';

const CLIENT_NAME = 'buildd-example-typescript/1.0';
// The same options the generated types were made with (package.json "generate").
const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

interface Options {
  address: string;
  project: string;
  out: string;
  protoDir: string;
  token: string;
}

function parseOptions(argv: string[]): Options {
  const options: Options = {
    address: process.env.BUILDD_ADDRESS ?? '',
    project: '',
    out: '',
    protoDir: path.resolve(__dirname, '..', '..', '..', 'proto'),
    token: process.env.BUILDD_TOKEN ?? '',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1] ?? ''];
    if (flag === '--address') options.address = value;
    else if (flag === '--project') options.project = path.resolve(value);
    else if (flag === '--out') options.out = path.resolve(value);
    else if (flag === '--proto-dir') options.protoDir = path.resolve(value);
    else throw new Error(`unknown option ${flag}`);
  }
  if (!options.address || !options.project || !options.out) {
    throw new Error('usage: main.js --address TARGET --project DIR --out DIR [--proto-dir DIR]');
  }
  return options;
}

function say(step: string, fields: Record<string, unknown> = {}): void {
  process.stdout.write(JSON.stringify({ step, ...fields }) + '\n');
}

/**
 * A session id to propose to OpenSession: 32 URL-safe characters from a
 * secure random source, never beginning with '-' or '_' (the daemon's own
 * shape). Proposing it lets the very first call carry the routing header.
 */
function newSessionId(): string {
  for (;;) {
    const id = crypto.randomBytes(24).toString('base64url');
    if (!id.startsWith('-') && !id.startsWith('_')) return id;
  }
}

/**
 * The call metadata for a call of `sessionId`: the token, plus the header
 * `x-buildd-session` by which a proxy in front of several daemons keeps the
 * session on its daemon (docs/scale-out.md). Every call naming a session sends it.
 */
function forSession(base: grpc.Metadata, sessionId: string): grpc.Metadata {
  const metadata = base.clone();
  metadata.set('x-buildd-session', sessionId);
  return metadata;
}

function deadline(seconds: number): grpc.CallOptions {
  return { deadline: Date.now() + seconds * 1000 };
}

/** A unary call as a promise; rejects with the grpc.ServiceError. */
function unary<Res>(start: (callback: grpc.requestCallback<Res>) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => {
    start((error, response) => {
      if (error) reject(error);
      else if (response === undefined) reject(new Error('empty response'));
      else resolve(response);
    });
  });
}

/** How a long call ended: its result, or the error (both ways it was reported). */
interface Outcome {
  result: Result__Output | null;
  failure: CallError | null;
  trailer: CallError | null;
}

/** Read a long call's stream to its end, passing each event to `onEvent`. */
function finish(
  stream: grpc.ClientReadableStream<Event__Output>,
  details: ReturnType<typeof loadDetailTypes>,
  onEvent: (event: Event__Output) => void,
): Promise<Outcome> {
  return new Promise((resolve) => {
    const outcome: Outcome = { result: null, failure: null, trailer: null };
    stream.on('data', (event: Event__Output) => {
      if (event.kind === 'result' && event.result) outcome.result = event.result;
      else if (event.kind === 'failure' && event.failure) outcome.failure = fromFailure(event.failure);
      else onEvent(event);
    });
    // After a `failure` event the RPC ends with the same status; a stream cut
    // short (cancel, deadline, drain) ends with a status and no final event.
    stream.on('error', (error: grpc.ServiceError) => {
      outcome.trailer = fromServiceError(details, error);
    });
    stream.on('close', () => resolve(outcome));
  });
}

function reportError(call: string, error: CallError, extra: Record<string, unknown> = {}): void {
  say('error', {
    call,
    code: grpc.status[error.code],
    reason: error.reason,
    fields: error.fields,
    metadata: error.metadata,
    retry_delay_seconds: error.retryDelaySeconds,
    action: actionFor(error),
    has_details: error.hasDetails,
    ...extra,
  });
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const googleProtos = path.dirname(require.resolve('google-proto-files/package.json'));
  const includeDirs = [options.protoDir, googleProtos];
  const definition = protoLoader.loadSync('buildd/v1/buildd.proto', {
    ...LOADER_OPTIONS,
    includeDirs,
  });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
  const details = loadDetailTypes(includeDirs);
  const client: BuilddClient = new loaded.buildd.v1.Buildd(
    options.address,
    grpc.credentials.createInsecure(),
  );
  const metadata = new grpc.Metadata();
  if (options.token) metadata.set('authorization', `Bearer ${options.token}`);

  // Which interpreters may we offer? (A Node plugin has no sys.executable.)
  const interpreters = await unary<ListInterpretersResponse__Output>(
    (cb) => client.ListInterpreters({}, metadata, deadline(60), cb),
  );
  const [daemonOwn] = interpreters.interpreters;
  say('interpreters', {
    count: interpreters.interpreters.length,
    first: daemonOwn ? { version: daemonOwn.version, source: daemonOwn.source } : null,
  });

  const proposed = newSessionId();
  let session = await unary<SessionInfo__Output>((cb) =>
    client.OpenSession(
      { client_name: CLIENT_NAME, session_id: proposed },
      forSession(metadata, proposed),
      deadline(30),
      cb,
    ),
  );
  say('session_opened', {
    principal: session.principal,
    ttl_seconds: session.ttl_seconds,
    daemon_id: session.daemon_id,
    proposed_id_kept: session.session_id === proposed,
  });
  let routed = forSession(metadata, session.session_id);

  // Hold the session while we work: the daemon sends heartbeats; when this
  // stream breaks, the session's idle clock starts.
  const keepalive = client.KeepAlive({ session_id: session.session_id, interval_seconds: 1 }, routed);
  keepalive.on('error', () => undefined); // cancelled below: CANCELLED is expected
  await new Promise<void>((resolve) => keepalive.once('data', () => resolve()));
  say('keepalive', { heartbeat: true });

  const context = {
    session_id: session.session_id,
    source: { path: options.project },
    python: daemonOwn ? daemonOwn.path : '',
  };

  // Metadata, with its progress events.
  const seen: string[] = [];
  let logLines = 0;
  const metadataCall = await finish(
    client.PrepareMetadata({ context, distribution: 'DISTRIBUTION_WHEEL' }, routed, deadline(300)),
    details,
    (event) => {
      if (event.kind === 'phase' && event.phase) {
        const phase = event.phase;
        seen.push(`${phase.kind.replace('PHASE_KIND_', '')}:${phase.step.replace('PHASE_STEP_', '')}`);
        if (phase.kind === 'PHASE_KIND_HOOK_FINISHED' && phase.outcome !== 'HOOK_OUTCOME_OK') {
          say('hook_not_ok', { hook: phase.hook, outcome: phase.outcome });
        }
      } else if (event.kind === 'log') {
        logLines += 1;
      }
    },
  );
  if (metadataCall.result?.metadata) {
    const text = metadataCall.result.metadata.metadata.toString('utf-8');
    const field = (name: string): string =>
      (text.match(new RegExp(`^${name}: (.*)$`, 'm')) ?? ['', ''])[1] ?? '';
    say('metadata', { name: field('Name'), version: field('Version'), phases: seen, log_lines: logLines });
  } else {
    reportError('PrepareMetadata', metadataCall.failure ?? metadataCall.trailer!);
  }

  // A wheel, built in the environment the metadata used.
  const buildCall = await finish(
    client.Build(
      { context, distributions: ['DISTRIBUTION_WHEEL'], output_directory: options.out },
      routed,
      deadline(600),
    ),
    details,
    () => undefined,
  );
  const artifact = buildCall.result?.build?.artifacts[0];
  if (artifact) {
    const local = `sha256:${crypto.createHash('sha256').update(fs.readFileSync(artifact.path)).digest('hex')}`;
    say('wheel', {
      filename: artifact.filename,
      digest: artifact.digest,
      size_bytes: artifact.size_bytes,
      verified: local === artifact.digest,
    });
    // A remote plugin cannot read the daemon's files: it downloads them.
    const hash = crypto.createHash('sha256');
    let announced = '';
    let received = 0;
    const download = client.DownloadArtifact(
      { session_id: session.session_id, path: artifact.path },
      routed,
      deadline(120),
    );
    download.on('data', (message) => {
      if (message.payload === 'header' && message.header) announced = message.header.digest;
      else if (message.chunk) {
        hash.update(message.chunk);
        received += message.chunk.length;
      }
    });
    await new Promise<void>((resolve, reject) => {
      download.on('end', () => resolve());
      download.on('error', reject);
    });
    say('downloaded', {
      bytes: received,
      verified: announced === artifact.digest && `sha256:${hash.digest('hex')}` === artifact.digest,
    });
  } else {
    reportError('Build', buildCall.failure ?? buildCall.trailer!);
  }

  // Errors, each handled by its reason. A distribution left at its zero value
  // (what a misspelt enum name becomes) is refused, naming the field:
  const unspecified: Distribution = 'DISTRIBUTION_UNSPECIFIED';
  const bad = await finish(
    client.PrepareMetadata({ context, distribution: unspecified }, routed, deadline(60)),
    details,
    () => undefined,
  );
  if (bad.failure && bad.trailer) {
    // The in-stream Failure and the status trailer say the same.
    const agree =
      bad.failure.reason === bad.trailer.reason &&
      bad.failure.code === bad.trailer.code &&
      bad.trailer.failure?.message === bad.failure.message;
    reportError('PrepareMetadata', bad.trailer, { agree });
  }
  // A source that does not exist:
  const missing = await finish(
    client.GetRequires(
      { context: { ...context, source: { path: path.join(options.out, 'no-such-project') } }, distribution: 'DISTRIBUTION_WHEEL' },
      routed,
      deadline(60),
    ),
    details,
    () => undefined,
  );
  if (missing.trailer) reportError('GetRequires', missing.trailer);
  // A session this daemon never knew (a unary call: the trailer is all there is):
  const unknown = 'x'.repeat(32);
  try {
    await unary<SessionInfo__Output>((cb) =>
      client.JoinSession({ session_id: unknown }, forSession(metadata, unknown), deadline(30), cb),
    );
  } catch (error) {
    reportError('JoinSession', fromServiceError(details, error as grpc.ServiceError));
  }
  // A routing header that names another session than the request is refused
  // (a proxy would have routed the call by the header):
  try {
    await unary<SessionInfo__Output>((cb) =>
      client.JoinSession({ session_id: session.session_id }, forSession(metadata, unknown), deadline(30), cb),
    );
  } catch (error) {
    reportError('JoinSession', fromServiceError(details, error as grpc.ServiceError));
  }

  // Close; a second process that still holds the id learns that it ended
  // (not that it never existed) and opens a new session.
  keepalive.cancel();
  const closed = await unary<CloseSessionResponse__Output>((cb) =>
    client.CloseSession({ session_id: session.session_id }, routed, deadline(60), cb),
  );
  say('session_closed', {
    environments_deleted: closed.environments_deleted,
    environments_stored: closed.environments_stored,
  });
  try {
    await unary<SessionInfo__Output>((cb) =>
      client.JoinSession({ session_id: session.session_id }, routed, deadline(30), cb),
    );
  } catch (caught) {
    const error = fromServiceError(details, caught as grpc.ServiceError);
    reportError('JoinSession', error);
    if (actionFor(error) === 'reopen-session') {
      const again = newSessionId();
      session = await unary<SessionInfo__Output>((cb) =>
        client.OpenSession(
          { client_name: CLIENT_NAME, session_id: again },
          forSession(metadata, again),
          deadline(30),
          cb,
        ),
      );
      routed = forSession(metadata, session.session_id);
      await unary<CloseSessionResponse__Output>((cb) =>
        client.CloseSession({ session_id: session.session_id }, routed, deadline(60), cb),
      );
      say('reopened', { closed_again: true });
    }
  }
  client.close();
  say('done');
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? error.stack ?? error.message : String(error)}\n`);
  process.exit(1);
});
