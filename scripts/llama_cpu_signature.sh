#!/usr/bin/env bash
# Prints what a -march=native build of llama.cpp depends on: the first CPU's model name and feature flags
# (uname -m where /proc/cpuinfo has no flags line). scripts/install_llama_cpp.sh keys its wheel cache and
# scripts/build_llama_server.sh its build stamp with it, so a build from another CPU is never reused.
grep -m1 '^model name' /proc/cpuinfo 2>/dev/null || true
grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m
