#!/bin/sh
":" //; d=$(dirname "$(readlink -f "$0")"); n="$d/../../node_modules/.bin/node"; [ -x "$n" ] || n=node; exec "$n" "$0" "$@"
// The line above lets this file run as a shell script that re-executes itself with the Node.js the
// project installed (Node 22+); Node itself reads it as a string and a comment.
import { main } from '../dist/index.js'

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (error) => {
    console.error(error)
    process.exitCode = 1
  },
)
