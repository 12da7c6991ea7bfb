/* slocast._native._core: the module object; the functions live in lte.c and forest.c. */
#include "native.h"

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "slocast._native._core",
    "slocast's native kernels: arrays in, arrays out (see docs/native.md).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void) {
    PyObject *module = PyModule_Create(&core_module);
    if (module == NULL) return NULL;
    if (PyModule_AddFunctions(module, slocast_lte_methods) < 0 ||
        PyModule_AddFunctions(module, slocast_forest_methods) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
