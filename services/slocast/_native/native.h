/* Shared declarations of slocast's native module: each component exports one
 * method table, gathered by module.c. Arrays cross the boundary through the
 * buffer protocol (NumPy arrays in, caller-allocated NumPy arrays out). */
#ifndef SLOCAST_NATIVE_H
#define SLOCAST_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

extern PyMethodDef slocast_lte_methods[];    /* lte.c: LTE feature kernel */
extern PyMethodDef slocast_forest_methods[]; /* forest.c: latency forests */

#endif
