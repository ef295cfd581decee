// Virga node runtime: an HTTP server on node's `http` module that hands each request to
// function/handler.js, an `async (event, context) => ...` like OpenFaaS's node templates.
// Listens on 127.0.0.1 and the port of $upstream_url (default 3000). With VIRGA_POOL=1 it is
// a generic runtime of a warm pool, bound to its function later by one call. With
// VIRGA_ZYGOTE=SOCKET (and VIRGA_NODE_ADDON, Virga's fork addon) it is a pre-forked
// interpreter: it forks one runtime per request on SOCKET instead of serving.
'use strict'

const http = require('http')
const path = require('path')

// In a warm pool (VIRGA_POOL=1) the runtime starts before it knows its function: it serves
// nothing until the platform POSTs /_/virga/bind once with the code's directory and env,
// carrying this runtime's bind token (VIRGA_BIND_TOKEN, known only to the platform).
let handler = null
let bindToken = Buffer.alloc(0)
// Only a pooled runtime checks a bind; it is started ahead of need, so loading crypto then
// costs no call.
let crypto = null

function loadFunction (root) {
  // Packages installed next to the handler by `virga build` resolve from its directory.
  handler = require(path.join(root, 'function', 'handler'))
}

// The answer to a bind proves the runtime knew its token.
function bind (req, res, raw) {
  if (req.method !== 'POST' || req.url !== '/_/virga/bind') {
    send(res, 503, {}, 'runtime not bound to a function\n')
    return
  }
  const given = Buffer.from(String(req.headers['x-virga-bind-token'] || ''), 'latin1')
  if (crypto === null || bindToken.length === 0 || given.length !== bindToken.length || !crypto.timingSafeEqual(given, bindToken)) {
    send(res, 403, {}, 'bind refused\n')
    return
  }
  try {
    const spec = JSON.parse(raw.toString('utf8'))
    Object.assign(process.env, spec.env || {})
    process.chdir(spec.dir)
    loadFunction(spec.dir)
  } catch (e) {
    console.error(e)
    send(res, 500, {}, `bind failed: ${e.message}\n`)
    return
  }
  const proof = crypto.createHash('sha256').update('virga-bound:').update(bindToken).digest('hex')
  bindToken = Buffer.alloc(0)
  send(res, 200, { 'X-Virga-Bound': proof }, 'bound\n')
}

let logRequests = false
// RAW_BODY=true: every body reaches the handler as a Buffer, as in the node20 template.
let rawBody = false

class FunctionEvent {
  constructor (req, body, url) {
    this.body = body
    this.headers = req.headers
    this.method = req.method
    this.query = parseQuery(url.search.slice(1))
    this.path = url.pathname
  }
}

class FunctionContext {
  constructor (done) {
    this.statusCode = 200
    this.headerValues = {}
    this.done = done
    this.cbCalled = 0
  }

  // status() reads the status; status(code) sets it and returns the context.
  status (statusCode) {
    if (statusCode === undefined) return this.statusCode
    this.statusCode = statusCode
    return this
  }

  // headers() reads the headers; headers(obj) sets them and returns the context.
  headers (value) {
    if (value === undefined) return this.headerValues
    this.headerValues = value || {}
    return this
  }

  succeed (value) {
    this.cbCalled++
    this.done(undefined, value)
  }

  fail (err) {
    this.cbCalled++
    this.done(err === undefined ? new Error('function failed') : err)
  }
}

function hasHeader (headers, name) {
  return Object.keys(headers).some((k) => k.toLowerCase() === name)
}

function send (res, status, headers, body) {
  let payload
  const out = Object.assign({}, headers)
  if (body === undefined || body === null) {
    payload = Buffer.alloc(0)
  } else if (Buffer.isBuffer(body)) {
    payload = body
  } else if (typeof body === 'object') {
    payload = Buffer.from(JSON.stringify(body))
    if (!hasHeader(out, 'content-type')) out['Content-Type'] = 'application/json'
  } else {
    payload = Buffer.from(String(body))
  }
  if (payload.length > 0 && !hasHeader(out, 'content-type')) {
    out['Content-Type'] = 'text/plain; charset=utf-8'
  }
  for (const k of Object.keys(out)) {
    if (/^(content-length|transfer-encoding)$/i.test(k)) delete out[k]
  }
  out['Content-Length'] = payload.length
  try {
    res.writeHead(status, out)
  } catch (e) {
    console.error(e)
    res.writeHead(500, { 'Content-Type': 'text/plain', 'Content-Length': 22 })
    res.end('invalid response head\n')
    return
  }
  res.end(payload)
}

// The body as the node20 template's parsers give it: with RAW_BODY=true always a Buffer;
// otherwise JSON parsed, forms parsed like query strings, text/* (and a request without a
// Content-Type, which counts as text/plain) as a string, and anything else as a Buffer, so
// binary bodies are never decoded as text.
function parseBody (req, raw) {
  if (rawBody) return raw
  if (!req.headers['content-type']) req.headers['content-type'] = 'text/plain'
  const type = req.headers['content-type'].toLowerCase()
  if (/^application\/(.+\+)?json/.test(type)) {
    if (raw.length === 0) return {}
    return JSON.parse(raw.toString('utf8'))
  }
  if (type.startsWith('application/x-www-form-urlencoded')) {
    return parseQuery(raw.toString('utf8'), FORM_DEPTH)
  }
  if (type.startsWith('text/')) {
    return raw.toString(/charset=(latin1|iso-8859-1)/.test(type) ? 'latin1' : 'utf8')
  }
  return raw
}

// Query strings and form bodies as Express's extended parser reads them: repeated names give
// arrays, brackets nest (a[b]=1 is {a: {b: '1'}}, a[]=1 and a[0]=1 are arrays), with its
// limits (1000 parameters, 5 levels for queries, indexes up to 20) and no keys that would
// shadow Object.prototype.
const MAX_PARAMS = 1000
const QUERY_DEPTH = 5
const FORM_DEPTH = 32
const MAX_INDEX = 20

function parseQuery (text, depth = QUERY_DEPTH) {
  const root = {}
  const lists = new Set()
  const counters = new Map()
  if (!text) return root
  for (const part of text.split('&', MAX_PARAMS)) {
    if (!part) continue
    const eq = part.indexOf('=')
    const key = decodePart(eq === -1 ? part : part.slice(0, eq))
    const value = decodePart(eq === -1 ? '' : part.slice(eq + 1))
    if (key) setPath(root, keyPath(key, depth), value, lists, counters)
  }
  return toArrays(root, lists)
}

function decodePart (s) {
  const spaced = s.replace(/\+/g, ' ')
  try {
    return decodeURIComponent(spaced)
  } catch (e) {
    return spaced
  }
}

// `a[b][]` is ['a', 'b', '']; brackets beyond `depth` stay one literal segment.
function keyPath (key, depth) {
  const open = key.indexOf('[')
  if (open <= 0) return [key]
  const path = [key.slice(0, open)]
  const segment = /\[([^[\]]*)\]/y
  let at = open
  while (path.length <= depth) {
    segment.lastIndex = at
    const m = segment.exec(key)
    if (m === null) break
    path.push(m[1])
    at = segment.lastIndex
  }
  if (at < key.length) path.push(key.slice(at))
  return path
}

function isIndex (seg) {
  return /^(0|[1-9][0-9]*)$/.test(seg) && Number(seg) <= MAX_INDEX
}

function setPath (root, path, value, lists, counters) {
  let node = root
  for (let i = 0; i < path.length; i++) {
    let seg = path[i]
    if (seg === '') {
      const n = counters.get(node) || 0
      counters.set(node, n + 1)
      seg = String(n)
      if (!lists.has(node) && Object.keys(node).length === 0) lists.add(node)
    } else if (!isIndex(seg)) {
      lists.delete(node)
    } else if (Object.keys(node).length === 0) {
      lists.add(node)
    }
    if (seg in Object.prototype) return
    if (i === path.length - 1) {
      const have = node[seg]
      if (have === undefined) node[seg] = value
      else if (Array.isArray(have)) have.push(value)
      else node[seg] = [have, value]
      return
    }
    if (typeof node[seg] !== 'object' || node[seg] === null || Array.isArray(node[seg])) {
      const child = {}
      if (node[seg] !== undefined) child[counters.get(child) || 0] = node[seg]
      node[seg] = child
    }
    node = node[seg]
  }
}

// Objects built from indexes become arrays (in index order, gaps dropped).
function toArrays (node, lists) {
  for (const k of Object.keys(node)) {
    const v = node[k]
    if (v && typeof v === 'object' && !Array.isArray(v)) node[k] = toArrays(v, lists)
  }
  if (!lists.has(node)) return node
  return Object.keys(node).sort((a, b) => a - b).map((k) => node[k])
}

function onRequest (req, res) {
  const chunks = []
  req.on('data', (c) => chunks.push(c))
  req.on('end', () => {
    if (logRequests) console.error(`${req.method} ${req.url}`)
    if (handler === null) {
      bind(req, res, Buffer.concat(chunks))
      return
    }
    let body
    try {
      body = parseBody(req, Buffer.concat(chunks))
    } catch (e) {
      send(res, 400, {}, `invalid JSON body: ${e.message}\n`)
      return
    }
    const url = new URL(req.url, 'http://localhost')
    let answered = false
    const done = (err, result) => {
      if (answered) return
      answered = true
      if (err !== undefined && err !== null) {
        console.error(err)
        const status = context.statusCode >= 400 ? context.statusCode : 500
        send(res, status, {}, err && err.message !== undefined ? String(err.message) : String(err))
        return
      }
      send(res, context.statusCode, context.headerValues, result)
    }
    const context = new FunctionContext(done)
    Promise.resolve()
      .then(() => handler(new FunctionEvent(req, body, url), context, done))
      .then((result) => {
        if (!context.cbCalled) context.succeed(result)
      })
      .catch((e) => done(e === undefined ? new Error('function failed') : e))
  })
  req.on('error', (e) => {
    console.error(e)
    res.destroy()
  })
}

function listenPort () {
  const raw = process.env.upstream_url
  if (raw) {
    try {
      const u = new URL(raw.includes('://') ? raw : `http://${raw}`)
      if (u.port) return Number(u.port)
    } catch (e) {
      console.error(`ignoring upstream_url ${raw}: ${e.message}`)
    }
  }
  return 3000
}

function serve (root) {
  // Taken out of the environment before any function code can run in this process.
  bindToken = Buffer.from(process.env.VIRGA_BIND_TOKEN || '', 'latin1')
  delete process.env.VIRGA_BIND_TOKEN
  if (process.env.VIRGA_POOL === '1') crypto = require('crypto')
  logRequests = /^(1|true|yes)$/i.test(process.env.write_debug || process.env.VIRGA_LOG_REQUESTS || '')
  rawBody = process.env.RAW_BODY === 'true'
  if (process.env.VIRGA_POOL !== '1') loadFunction(root)
  const server = http.createServer(onRequest)
  server.keepAliveTimeout = 65000
  server.headersTimeout = 66000
  const port = listenPort()
  server.listen(port, '127.0.0.1', () => {
    if (logRequests) console.error(`node listening on 127.0.0.1:${port}`)
  })
  const stop = () => {
    server.close(() => process.exit(0))
    setTimeout(() => process.exit(0), 2000).unref()
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

// The zygote: everything above is loaded once; `zygote()` never returns here, but returns in
// each forked runtime with the directory and environment it serves.
function forkRuntimes (socket) {
  const addon = { exports: {} }
  process.dlopen(addon, process.env.VIRGA_NODE_ADDON)
  // Loaded before forking, like everything else a runtime needs.
  const { randomFillSync } = require('crypto')
  const spec = JSON.parse(addon.exports.zygote(socket))
  // A forked runtime keeps the zygote's cached pid, and must not run node's exit path (it
  // tears down V8 threads that fork did not copy).
  Object.defineProperty(process, 'pid', { value: addon.exports.pid(), enumerable: true, configurable: true })
  process.reallyExit = (code) => addon.exports.exit(code | 0)
  reseedMathRandom(randomFillSync)
  process.on('uncaughtExceptionMonitor', (err) => {
    // Node's fatal-error exit takes the same teardown path: report the error and exit here.
    if (process.listenerCount('uncaughtException') > 0) return
    console.error(err)
    process.exit(1)
  })
  for (const k of Object.keys(process.env)) delete process.env[k]
  Object.assign(process.env, spec.env)
  process.chdir(spec.dir)
  serve(spec.dir)
}

// Math.random's state is the zygote's in every forked runtime, so each would draw the same
// numbers: forked runtimes draw from the system's CSPRNG instead (53 random bits per call).
function reseedMathRandom (randomFillSync) {
  const pool = new Uint32Array(1024)
  let next = pool.length
  Math.random = function random () {
    if (next + 2 > pool.length) {
      randomFillSync(pool)
      next = 0
    }
    const high = pool[next++] >>> 5
    const low = pool[next++] >>> 6
    return (high * 67108864 + low) / 9007199254740992
  }
}

// Before forking: one request through node's HTTP server and client, so that code is
// compiled once in the zygote rather than on every forked runtime's first request.
function warmUp (then) {
  const server = http.createServer(onRequest)
  server.listen(0, '127.0.0.1', () => {
    const req = http.request({ port: server.address().port, host: '127.0.0.1', method: 'POST', path: '/', agent: false })
    req.on('response', (res) => {
      res.resume()
      res.on('end', () => server.close(then))
    })
    req.on('error', () => server.close(then))
    req.end('{}')
  })
}

if (process.env.VIRGA_ZYGOTE) {
  warmUp(() => forkRuntimes(process.env.VIRGA_ZYGOTE))
} else {
  serve(__dirname)
}
