import { open } from 'node:fs/promises';

/** Inverts `length` bytes in the middle of a file: same size, certainly different content. */
export async function corruptInPlace(path: string, length = 64): Promise<void> {
  const handle = await open(path, 'r+');
  try {
    const { size } = await handle.stat();
    const position = Math.floor(size / 2);
    const bytes = Buffer.alloc(length);
    const { bytesRead } = await handle.read(bytes, 0, length, position);
    for (let index = 0; index < bytesRead; index++) bytes[index] = bytes[index]! ^ 0xff;
    await handle.write(bytes, 0, bytesRead, position);
    await handle.sync();
  } finally {
    await handle.close();
  }
}
