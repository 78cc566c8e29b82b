/**
 * Test helpers for servers that speak the lean RPC framing (src/wire/lean*.ts): a Metadata service that
 * answers Stat alone, and a hand-driven lean connection that writes raw frames and collects the frames
 * the server sends back (GOAWAY and refusals included, which a DogFS channel hides).
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { DogfsError } from '../../src/wire/errors.js';
import { FileType, type MetadataMethods, MetadataService } from '../../src/wire/gen/types.js';
import { decodeError, encodeRequest, FrameReader, FrameType } from '../../src/wire/lean.js';
import { decodeMessage, encodeMessage } from '../../src/wire/proto.js';
import type { ServiceHandlers } from '../../src/wire/rpc.js';

/**
 * Stat runs `stat(path)`, then answers with `answer(path)` (in `inode.ec`; the path unless told); every
 * other method is UNIMPLEMENTED.
 */
export function statOnly(
  stat: (path: string) => Promise<void>,
  answer: (path: string) => string = (path) => path,
): ServiceHandlers<MetadataMethods> {
  const handlers: Record<string, unknown> = {};
  for (const name of Object.keys(MetadataService.methods)) {
    handlers[name] = () => {
      throw new DogfsError('UNIMPLEMENTED', 'not in this test');
    };
  }
  handlers['Stat'] = async (request: { path: string }) => {
    await stat(request.path);
    return { inode: { id: 1, type: FileType.FILE, size: 0, ec: answer(request.path) } };
  };
  return handlers as ServiceHandlers<MetadataMethods>;
}

export interface Frame {
  type: number;
  callId: number;
  body: Buffer;
}

/** A connection to 127.0.0.1:port that writes raw bytes (the magic too) and collects the frames back. */
export async function rawLeanConnection(port: number): Promise<{
  socket: Socket;
  frames: Frame[];
  closed: () => boolean;
}> {
  const socket = connect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.on('error', () => {});
  const frames: Frame[] = [];
  let closed = false;
  socket.on('close', () => {
    closed = true;
  });
  const reader = new FrameReader(1 << 20, {
    frame: (type, callId, body) => frames.push({ type, callId, body: Buffer.from(body) }),
    oversized: () => assert.fail('the server sent an oversized frame'),
  });
  socket.on('data', (chunk: Buffer) => reader.push(chunk));
  return { socket, frames, closed: () => closed };
}

export const STAT = `/${MetadataService.name}/Stat`;

export function statRequest(callId: number, path: string, timeoutMs = 5000): Buffer {
  return encodeRequest(callId, STAT, timeoutMs, encodeMessage('dogfs.v1.StatRequest', { path }));
}

export function statAnswer(frame: Frame | undefined): string | undefined {
  return frame?.type === FrameType.RESPONSE
    ? decodeMessage('dogfs.v1.StatResponse', frame.body).inode?.ec
    : undefined;
}

export function errorOf(frames: Frame[], callId: number): { code: string; message: string } | undefined {
  const frame = frames.find((f) => f.callId === callId && f.type === FrameType.ERROR);
  return frame === undefined ? undefined : decodeError(frame.body);
}
