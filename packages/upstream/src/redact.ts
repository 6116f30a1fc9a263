/**
 * A URL as it may appear in logs and error details: without user info and with every query value
 * replaced, because presigned object-storage URLs carry credentials in the query
 * (`X-Amz-Signature`, `X-Amz-Credential`, `sig`, ...). Parameter names stay, for diagnosis.
 */
export function redactUrl(url: URL | string): string {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return '<invalid url>'
  }
  parsed.username = ''
  parsed.password = ''
  parsed.hash = ''
  const names = [...new Set(parsed.searchParams.keys())]
  const query = names.map((name) => `${encodeURIComponent(name)}=REDACTED`).join('&')
  return `${parsed.origin}${parsed.pathname}${query === '' ? '' : `?${query}`}`
}
