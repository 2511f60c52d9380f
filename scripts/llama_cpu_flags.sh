#!/usr/bin/env bash
# Prints the compiler flags that llama.cpp builds here need on top of -march=native (GGML_NATIVE).
#
# Intel AMX: -march=native turns on ggml's AMX matmul kernels when the CPU reports amx_int8/amx_tile, but
# in virtual machines that hide the AMX tile state from guests (seen here on 2026-11-27: a Firecracker VM on
# a Sapphire Rapids host; arch_prctl grants the permission, then `ldtilecfg` raises a general protection
# fault) every Q4_K matmul crashes the process with SIGSEGV. AVX-512/VNNI stay on; only AMX is switched off.
# Set INFILL_LS_ALLOW_AMX=1 on bare metal where AMX works.
set -euo pipefail
if [ "${INFILL_LS_ALLOW_AMX:-0}" != 1 ] && grep -qs -m1 -w 'amx_tile' /proc/cpuinfo; then
  echo "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
