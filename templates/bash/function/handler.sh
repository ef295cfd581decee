#!/bin/sh
# Reads the request body on stdin; what is written to stdout is the response.
tr '[:lower:]' '[:upper:]'
