/* LTE feature kernel (to be moved here from models/native_forecast_c.py). */
#include "native.h"

PyMethodDef slocast_lte_methods[] = {{NULL, NULL, 0, NULL}};
