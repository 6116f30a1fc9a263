/**
 * `WWW-Authenticate` parsing (RFC 9110 §11.6.1). A header holds one or more challenges:
 *
 *   challenge  = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
 *   auth-param = token BWS "=" BWS ( token / quoted-string )
 *
 * Challenges and their parameters are both separated by commas, so a comma followed by
 * `token "="` continues the current challenge while a comma followed by a bare token starts the
 * next one. Registries send, for example:
 *
 *   Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"
 *   Basic realm="Registry Realm"
 *   Basic realm="harbor", Bearer realm="https://harbor.example.com/service/token",service="harbor-registry"
 *
 * Quoted values may contain commas and backslash escapes (a scope listing several actions
 * contains commas). The parser is lenient: it never throws and skips what it cannot read.
 */
export interface AuthChallenge {
  /** Lower-cased, e.g. `bearer` or `basic`. */
  scheme: string
  /** Parameter values by lower-cased name; the first occurrence of a name wins. */
  params: Record<string, string>
  token68?: string
}

const TOKEN_CHARACTER = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/
const TOKEN68 = /^[A-Za-z0-9\-._~+/]+=*(?=[ \t]*(?:,|$))/

export function parseWwwAuthenticate(header: string | readonly string[] | undefined): AuthChallenge[] {
  if (header === undefined) return []
  const lines = typeof header === 'string' ? [header] : header
  return lines.flatMap((line) => new ChallengeParser(line).parse())
}

class ChallengeParser {
  private position = 0

  constructor(private readonly text: string) {}

  parse(): AuthChallenge[] {
    const challenges: AuthChallenge[] = []
    while (this.position < this.text.length) {
      this.skip(/[ \t,]/)
      if (this.position >= this.text.length) break
      const scheme = this.readToken()
      if (scheme === '') {
        this.position++
        continue
      }
      const challenge: AuthChallenge = { scheme: scheme.toLowerCase(), params: Object.create(null) as Record<string, string> }
      challenges.push(challenge)
      this.skip(/[ \t]/)
      const token68 = TOKEN68.exec(this.text.slice(this.position))
      if (token68 !== null) {
        challenge.token68 = token68[0]
        this.position += token68[0].length
        continue
      }
      this.readParams(challenge.params)
    }
    return challenges
  }

  private readParams(params: Record<string, string>): void {
    for (;;) {
      this.skip(/[ \t]/)
      const start = this.position
      const name = this.readToken()
      if (name === '') return
      this.skip(/[ \t]/)
      if (this.text[this.position] !== '=') {
        // A bare token after a comma is the next challenge's scheme.
        this.position = start
        return
      }
      this.position++
      this.skip(/[ \t]/)
      const value = this.text[this.position] === '"' ? this.readQuoted() : this.readToken()
      const key = name.toLowerCase()
      if (!(key in params)) params[key] = value
      this.skip(/[ \t]/)
      if (this.text[this.position] !== ',') return
      this.skip(/[ \t,]/)
    }
  }

  private readToken(): string {
    const start = this.position
    while (this.position < this.text.length && TOKEN_CHARACTER.test(this.text[this.position]!)) this.position++
    return this.text.slice(start, this.position)
  }

  /** Reads a quoted-string starting at its opening quote; an unterminated one runs to the end. */
  private readQuoted(): string {
    let value = ''
    this.position++
    while (this.position < this.text.length) {
      const character = this.text[this.position++]!
      if (character === '"') return value
      if (character === '\\' && this.position < this.text.length) {
        value += this.text[this.position++]
      } else {
        value += character
      }
    }
    return value
  }

  private skip(characters: RegExp): void {
    while (this.position < this.text.length && characters.test(this.text[this.position]!)) this.position++
  }
}
