'use strict'

// Greets the caller: ?name=X in the query, or a JSON body {"name": X}.
module.exports = async (event, context) => {
  const name = (event.query && event.query.name) || (event.body && event.body.name) || 'world'
  return context.status(200).succeed({ message: `Hello, ${name}!`, method: event.method })
}
