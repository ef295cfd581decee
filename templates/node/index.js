// Virga classic node runtime: one process per request. Reads the whole request body from
// stdin, calls function/handler.js as handler(body, callback) and writes the result to
// stdout: objects and arrays as a JSON line, anything else as it is. A handler may also
// return a promise of its result. Errors go to stderr (the watchdog answers 500).
'use strict'

const handler = require('./function/handler')

function isObject (a) {
  return !!a && a.constructor === Object
}

// An (event, context) handler of the node20 template fails here on its context's methods:
// say which template it was written for.
function explain (err) {
  const text = err && err.stack ? err.stack : String(err)
  if (err instanceof TypeError && /\.(status|succeed|fail|headers) is not a function/.test(err.message)) {
    return `${text}\nThis looks like an (event, context) handler: the classic node template ` +
      'calls handler(body, callback). Use `lang: node20` (or node18, node22) for it.'
  }
  return text
}

let answered = false
function done (err, result) {
  if (answered) return
  answered = true
  if (err) {
    console.error(explain(err))
    process.exitCode = 1
    return
  }
  if (result === undefined || result === null) return
  if (Array.isArray(result) || isObject(result)) {
    process.stdout.write(JSON.stringify(result) + '\n')
  } else {
    process.stdout.write(Buffer.isBuffer(result) ? result : String(result))
  }
}

const chunks = []
process.stdin.on('data', (c) => chunks.push(c))
process.stdin.on('end', () => {
  const body = Buffer.concat(chunks).toString('utf8')
  try {
    const result = handler(body, done)
    if (result && typeof result.then === 'function') {
      result.then((value) => done(undefined, value), (e) => done(e))
    }
  } catch (e) {
    done(e)
  }
})
