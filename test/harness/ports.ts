import { createServer } from 'node:net';

/**
 * Returns a loopback port that was free a moment ago. Only for programs that cannot listen on
 * port 0 and report the port back (docker-registry needs a concrete `http.addr`); anything we
 * write ourselves listens on 0 instead. The kernel hands out ephemeral ports round-robin, so
 * reuse by another process between close and the child's bind is unlikely, not impossible.
 */
export async function findFreePort(host = '127.0.0.1'): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port: 0, exclusive: true }, resolve);
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') {
    throw new Error(`listening on ${host}:0 gave no TCP address`);
  }
  return address.port;
}
