// Virga node-lambda runtime: a small client of the AWS Lambda Runtime API (node's `http`
// module, no npm packages; npm's aws-lambda-ric needs node >= 22). It loads $_HANDLER
// (`handler.handler`: function/handler.js's `handler` export) from $LAMBDA_TASK_ROOT, then
// loops: GET /invocation/next, call handler(event, context[, callback]), POST the result to
// /response or the error to /error, as AWS's Node.js runtime does.
'use strict'

const http = require('http')
const path = require('path')
const fs = require('fs')
const util = require('util')
const { pathToFileURL } = require('url')

const [apiHost, apiPort] = String(process.env.AWS_LAMBDA_RUNTIME_API || '').split(':')
const PREFIX = '/2018-06-01/runtime'
// One connection, kept alive; a free socket is unref'd, so it never keeps the loop busy.
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })

/** The request in flight, for uncaught errors and log lines. */
let current = null

function request (method, url, headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: apiHost, port: apiPort, method, path: PREFIX + url, headers, agent }, res => {
      const chunks = []
      res.on('data', c => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body)
  })
}

async function post (url, body, headers) {
  const data = Buffer.from(body)
  const res = await request('POST', url, Object.assign({ 'Content-Type': 'application/json', 'Content-Length': data.length }, headers), data)
  if (res.status >= 300) {
    writeLog('ERROR', [`runtime API answered ${res.status} to POST ${url}: ${res.body}`])
  }
}

/** An error as Node's Lambda runtime reports it. */
function errorJson (err) {
  if (err instanceof Error) {
    return { errorType: err.name, errorMessage: err.message, trace: String(err.stack || '').split('\n') }
  }
  return { errorType: typeof err, errorMessage: String(err), trace: [] }
}

/** A runtime error of Lambda's own type (Runtime.ImportModuleError, ...). */
function runtimeError (type, message, cause) {
  const e = new Error(message)
  e.name = type
  if (cause && cause.stack) e.stack = `${type}: ${message}\n${cause.stack}`
  return e
}

async function postError (url, err) {
  const json = errorJson(err)
  writeLog('ERROR', [`Invoke Error ${JSON.stringify(json)}`])
  await post(url, JSON.stringify(json), { 'Lambda-Runtime-Function-Error-Type': json.errorType })
}

// Log lines carry the time, the request id and the level, as on Lambda.
function writeLog (level, args) {
  const id = current ? current.id : 'undefined'
  process.stdout.write(`${new Date().toISOString()}\t${id}\t${level}\t${util.format(...args)}\n`)
}
for (const [name, level] of [['log', 'INFO'], ['info', 'INFO'], ['warn', 'WARN'], ['error', 'ERROR'], ['debug', 'DEBUG'], ['trace', 'TRACE']]) {
  console[name] = (...args) => writeLog(level, args)
}

/** `dir/file.a.b` → the module `dir/file` and the export path `a.b`. */
function splitHandler (spec) {
  const slash = spec.lastIndexOf('/') + 1
  const dot = spec.indexOf('.', slash)
  if (dot < 0 || dot === spec.length - 1) {
    throw runtimeError('Runtime.MalformedHandlerName', `Bad handler ${spec}: expected MODULE.FUNCTION, e.g. handler.handler`)
  }
  return [spec.slice(0, dot), spec.slice(dot + 1).split('.')]
}

async function loadModule (root, name) {
  const base = path.resolve(root, name)
  const file = ['.js', '.mjs', '.cjs'].map(ext => base + ext).find(f => fs.existsSync(f))
  if (!file) {
    throw runtimeError('Runtime.ImportModuleError', `Error: Cannot find module '${name}'`)
  }
  try {
    if (file.endsWith('.mjs')) return await import(pathToFileURL(file).href)
    try {
      return require(file)
    } catch (e) {
      // A .js file of an ES module package ("type": "module").
      if (e.code === 'ERR_REQUIRE_ESM') return await import(pathToFileURL(file).href)
      throw e
    }
  } catch (e) {
    if (e instanceof SyntaxError) throw runtimeError('Runtime.UserCodeSyntaxError', `${e.name}: ${e.message}`, e)
    if (e.code === 'MODULE_NOT_FOUND') throw runtimeError('Runtime.ImportModuleError', `Error: ${e.message}`, e)
    throw e
  }
}

async function loadHandler () {
  const spec = process.env._HANDLER || 'handler.handler'
  const root = path.isAbsolute(process.env.LAMBDA_TASK_ROOT || '') ? process.env.LAMBDA_TASK_ROOT : process.cwd()
  const [name, props] = splitHandler(spec)
  let fn = await loadModule(root, name)
  for (const p of props) fn = fn == null ? undefined : fn[p]
  if (typeof fn !== 'function') {
    throw runtimeError('Runtime.HandlerNotFound', `${spec} is undefined or not exported`)
  }
  return fn
}

function jsonHeader (value) {
  return value ? JSON.parse(value) : undefined
}

function makeContext (h, finish) {
  const deadline = Number(h['lambda-runtime-deadline-ms'])
  const env = process.env
  return {
    functionName: env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION,
    invokedFunctionArn: h['lambda-runtime-invoked-function-arn'],
    memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    awsRequestId: h['lambda-runtime-aws-request-id'],
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME,
    identity: jsonHeader(h['lambda-runtime-cognito-identity']),
    clientContext: jsonHeader(h['lambda-runtime-client-context']),
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    // The legacy context methods.
    done: (err, result) => finish(err, result),
    succeed: result => finish(null, result),
    fail: err => finish(err == null ? new Error('handled') : err)
  }
}

/** Runs one invocation; resolves with [error, result] once the handler is done. */
function invoke (handler, event, h) {
  return new Promise(resolve => {
    let settled = false
    let context = null
    const finish = (err, result) => {
      if (settled) return
      settled = true
      resolve([err, result])
    }
    // A callback-style handler's answer goes out once the event loop is empty, unless the
    // handler set callbackWaitsForEmptyEventLoop = false (Lambda's rule).
    const callback = (err, result) => {
      if (context.callbackWaitsForEmptyEventLoop) {
        process.once('beforeExit', () => finish(err, result))
      } else {
        finish(err, result)
      }
    }
    context = makeContext(h, finish)
    try {
      const out = handler(event, context, callback)
      if (out && typeof out.then === 'function') {
        out.then(result => finish(null, result), err => finish(err == null ? new Error('rejected') : err))
      } else if (handler.length < 3) {
        finish(null, out)
      }
    } catch (err) {
      finish(err)
    }
  })
}

async function serve (handler) {
  for (;;) {
    current = null
    const next = await request('GET', '/invocation/next')
    if (next.status !== 200) throw new Error(`runtime API answered ${next.status} to /invocation/next`)
    const h = next.headers
    const id = h['lambda-runtime-aws-request-id']
    current = { id }
    if (h['lambda-runtime-trace-id']) process.env._X_AMZN_TRACE_ID = h['lambda-runtime-trace-id']
    else delete process.env._X_AMZN_TRACE_ID
    let event
    try {
      event = JSON.parse(next.body.toString('utf8'))
    } catch (e) {
      await postError(`/invocation/${id}/error`, runtimeError('Runtime.UnmarshalError', `Unable to parse event: ${e.message}`))
      continue
    }
    const [err, result] = await invoke(handler, event, h)
    if (err != null) {
      await postError(`/invocation/${id}/error`, err)
      continue
    }
    let body
    try {
      body = JSON.stringify(result === undefined ? null : result)
    } catch (e) {
      await postError(`/invocation/${id}/error`, runtimeError('Runtime.SerializationError', `Unable to stringify response body: ${e.message}`))
      continue
    }
    await post(`/invocation/${id}/response`, body)
  }
}

// An error thrown outside the handler's promise ends the invocation and the runtime, as on
// Lambda: it is reported for the request in flight (or as an init error), then the process
// exits and the watchdog starts a fresh one.
async function fatal (err, code) {
  try {
    await postError(current ? `/invocation/${current.id}/error` : '/init/error', err)
  } finally {
    process.exit(code)
  }
}
process.on('uncaughtException', err => fatal(err, 129))
process.on('unhandledRejection', reason => {
  const err = reason instanceof Error ? reason : runtimeError('Runtime.UnhandledPromiseRejection', String(reason))
  fatal(err, 128)
})

async function main () {
  let handler
  try {
    handler = await loadHandler()
  } catch (err) {
    await postError('/init/error', err)
    process.exit(1)
  }
  await serve(handler)
}

main().catch(err => {
  process.stderr.write(`node-lambda runtime: ${err.stack || err}\n`)
  process.exit(1)
})
