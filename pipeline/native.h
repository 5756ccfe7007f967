/* What every skel C kernel shares (pipeline/native.py loads them): checked buffer access and sizes, and the module
 * definition with SOURCE_SHA256, the sha256 of the kernel's source and this header (setup.py bakes it in),
 * so a build older than either is found when the kernel is first used. */
#ifndef SKEL_NATIVE_H
#define SKEL_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* A C-contiguous view of obj of exactly nbytes (writable when asked); -1 and a Python error otherwise. */
static inline int get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t nbytes, int writable, const char *name) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    if (view->len != nbytes) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd bytes, got %zd", name, nbytes, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* a * b * ... into *r; 0 (and a ValueError) when the product overflows. */
static inline int product(Py_ssize_t *r, int n, const Py_ssize_t *f) {
    Py_ssize_t acc = 1;
    for (int i = 0; i < n; i++) {
        if (__builtin_mul_overflow(acc, f[i], &acc)) {
            PyErr_SetString(PyExc_ValueError, "dimensions too large");
            return 0;
        }
    }
    *r = acc;
    return 1;
}

#ifndef SKEL_SOURCE_SHA256
#define SKEL_SOURCE_SHA256 "unknown" /* built without setup.py */
#endif

/* The module NAME (PyInit_NAME) with the method table METHODS, the docstring DOC and SOURCE_SHA256. */
#define SKEL_MODULE(NAME, DOC, METHODS)                                                                      \
    static struct PyModuleDef module_def = {                                                                 \
        PyModuleDef_HEAD_INIT, .m_name = #NAME, .m_doc = DOC, .m_size = -1, .m_methods = METHODS,           \
    };                                                                                                       \
    PyMODINIT_FUNC PyInit_##NAME(void) {                                                                     \
        PyObject *m = PyModule_Create(&module_def);                                                          \
        if (m && PyModule_AddStringConstant(m, "SOURCE_SHA256", SKEL_SOURCE_SHA256) < 0) Py_CLEAR(m);      \
        return m;                                                                                            \
    }

#endif
