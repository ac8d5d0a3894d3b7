// Reading buildd's errors: the standard google.rpc.Status in the
// `grpc-status-details-bin` trailer of every failed call, or the in-stream
// Failure event of a long call (both say the same), and what to do about each.
import * as fs from 'node:fs';

import * as grpc from '@grpc/grpc-js';
import * as protobuf from 'protobufjs';

import type { Failure__Output } from './generated/buildd/v1/Failure';
import type { BadRequest__Output } from './generated/google/rpc/BadRequest';
import type { ErrorInfo__Output } from './generated/google/rpc/ErrorInfo';
import type { RetryInfo__Output } from './generated/google/rpc/RetryInfo';
import type { Status__Output } from './generated/google/rpc/Status';

/** One failed call, whichever way the daemon reported it. */
export interface CallError {
  /** The gRPC status code. */
  code: grpc.status;
  message: string;
  /** ErrorInfo.reason: the FailureKind without its prefix, e.g. "SESSION_ENDED". */
  reason: string;
  /** ErrorInfo.metadata: "session_id", "end_reason", "field", "path", "digest"... */
  metadata: Record<string, string>;
  /** BadRequest field violations: the request fields at fault. */
  fields: string[];
  /** RetryInfo: seconds to wait before the same call may succeed; null: do not retry. */
  retryDelaySeconds: number | null;
  /** The buildd.v1.Failure itself (from the trailer, or the stream's final event). */
  failure: Failure__Output | null;
  /** True when the standard error details were there (a proxy may drop trailers). */
  hasDetails: boolean;
}

/** What a plugin does about a failure: decided by reason, never by message text. */
export type Action =
  | 'reopen-session'
  | 'upload-again'
  | 'retry-later'
  | 'fix-input'
  | 'fix-credentials'
  | 'report';

export function actionFor(error: CallError): Action {
  switch (error.reason) {
    case 'SESSION_NOT_FOUND':
    case 'SESSION_ENDED':
      return 'reopen-session';
    case 'BLOB_NOT_FOUND':
      return 'upload-again';
    case 'UNAVAILABLE':
      return 'retry-later';
    case 'INVALID_REQUEST':
    case 'INVALID_PROJECT':
    case 'SOURCE_NOT_FOUND':
    case 'SOURCE_UNREADABLE':
    case 'INTERPRETER_NOT_FOUND':
    case 'PERMISSION_DENIED':
    case 'ARTIFACT_NOT_FOUND':
      return 'fix-input';
    case 'UNAUTHENTICATED':
      return 'fix-credentials';
    default:
      // INSTALL_FAILED, BACKEND_FAILED, HOOK_MISSING...: show the user
      // Failure.message and Failure.last_lines; a kind newer than this client
      // still carries its RetryInfo.
      return error.retryDelaySeconds !== null ? 'retry-later' : 'report';
  }
}

const TO_OBJECT: protobuf.IConversionOptions = {
  longs: String,
  enums: String,
  bytes: Buffer,
  defaults: true,
  arrays: true,
  objects: true,
  oneofs: true,
};

/** The message types the details hold, loaded from the same .proto files as the client. */
export function loadDetailTypes(includeDirs: string[]): protobuf.Root {
  const root = new protobuf.Root();
  root.resolvePath = (_origin: string, target: string): string => {
    for (const dir of includeDirs) {
      const candidate = `${dir}/${target}`;
      if (fs.existsSync(candidate)) {
        return candidate;
      }
    }
    return target; // google/protobuf/*.proto: protobufjs knows those itself
  };
  root.loadSync(
    ['buildd/v1/buildd.proto', 'google/rpc/status.proto', 'google/rpc/error_details.proto'],
    { keepCase: true },
  );
  return root;
}

function decode<T>(root: protobuf.Root, typeName: string, bytes: Uint8Array): T {
  const type = root.lookupType(typeName);
  return type.toObject(type.decode(bytes), TO_OBJECT) as T;
}

/** A failed call's error, from its status and the standard details trailer. */
export function fromServiceError(root: protobuf.Root, error: grpc.ServiceError): CallError {
  const result: CallError = {
    code: error.code,
    message: error.details,
    reason: '',
    metadata: {},
    fields: [],
    retryDelaySeconds: null,
    failure: null,
    hasDetails: false,
  };
  const [raw] = error.metadata?.get('grpc-status-details-bin') ?? [];
  if (!(raw instanceof Buffer)) {
    return result;
  }
  const status = decode<Status__Output>(root, 'google.rpc.Status', raw);
  result.hasDetails = true;
  for (const detail of status.details) {
    const typeName = detail.type_url.slice(detail.type_url.lastIndexOf('/') + 1);
    const value = detail.value as Uint8Array;
    if (typeName === 'google.rpc.ErrorInfo') {
      const info = decode<ErrorInfo__Output>(root, typeName, value);
      result.reason = info.reason;
      result.metadata = info.metadata;
    } else if (typeName === 'google.rpc.BadRequest') {
      const bad = decode<BadRequest__Output>(root, typeName, value);
      result.fields = bad.field_violations.map((violation) => violation.field);
    } else if (typeName === 'google.rpc.RetryInfo') {
      const retry = decode<RetryInfo__Output>(root, typeName, value);
      const delay = retry.retry_delay;
      result.retryDelaySeconds =
        delay === null ? 0 : Number(delay.seconds) + delay.nanos / 1e9;
    } else if (typeName === 'buildd.v1.Failure') {
      result.failure = decode<Failure__Output>(root, typeName, value);
    }
  }
  return result;
}

/** The final `failure` event of a long call, as a CallError (before its status arrives). */
export function fromFailure(failure: Failure__Output): CallError {
  return {
    code: failure.status_code as grpc.status,
    message: failure.message,
    reason: failure.kind.replace(/^FAILURE_KIND_/, ''),
    metadata: failure.metadata,
    fields: failure.field ? [failure.field] : [],
    retryDelaySeconds: failure.retry_delay_seconds > 0 ? failure.retry_delay_seconds : null,
    failure,
    hasDetails: true,
  };
}
