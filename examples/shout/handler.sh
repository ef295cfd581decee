#!/bin/sh
# Upper-cases whatever is sent.
tr '[:lower:]' '[:upper:]'
