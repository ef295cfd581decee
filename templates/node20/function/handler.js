'use strict'

module.exports = async (event, context) => {
  return context
    .status(200)
    .succeed({ message: "Hello from Virga!", input: event.body })
}
