// Virga node runtime: an HTTP server on node's `http` module that hands each request to
// function/handler.js, an `async (event, context) => ...` like OpenFaaS's node templates.
// Listens on 127.0.0.1 and the port of $upstream_url (default 3000). With VIRGA_POOL=1 it is
// a generic runtime of a warm pool, bound to its function later by one call.
'use strict'

const http = require('http')
const path = require('path')

// In a warm pool (VIRGA_POOL=1) the runtime starts before it knows its function: it serves
// nothing until the platform POSTs /_/virga/bind once with the code's directory and env.
let handler = null

function loadFunction (root) {
  // Packages installed next to the handler by `virga build` resolve from its directory.
  handler = require(path.join(root, 'function', 'handler'))
}

if (process.env.VIRGA_POOL !== '1') loadFunction(__dirname)

function bind (req, res, raw) {
  if (req.method !== 'POST' || req.url !== '/_/virga/bind') {
    send(res, 503, {}, 'runtime not bound to a function\n')
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
  send(res, 200, {}, 'bound\n')
}

const logRequests = /^(1|true|yes)$/i.test(process.env.write_debug || process.env.VIRGA_LOG_REQUESTS || '')

class FunctionEvent {
  constructor (req, body, url) {
    this.body = body
    this.headers = req.headers
    this.method = req.method
    this.query = Object.fromEntries(url.searchParams)
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

function parseBody (req, raw) {
  const type = (req.headers['content-type'] || '').toLowerCase()
  if (/^application\/(.+\+)?json/.test(type)) {
    if (raw.length === 0) return {}
    return JSON.parse(raw.toString('utf8'))
  }
  return raw.toString('utf8')
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
