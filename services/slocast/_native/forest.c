/* Latency forests (to be moved here from latency/native.py). */
#include "native.h"

PyMethodDef slocast_forest_methods[] = {{NULL, NULL, 0, NULL}};
