#include "config.h"

#include "ead-backend.h"

#include <gmodule.h>
#include <stdlib.h>

#include "ead-error.h"

#define EAD_WORKSPACE_ALIGN 64

void
ead_workspace_require (EadWorkspace *workspace, size_t bytes)
{
  workspace->size = MAX (workspace->size, bytes);
}

gboolean
ead_workspace_commit (EadWorkspace *workspace, GError **error)
{
  size_t size = (workspace->size + EAD_WORKSPACE_ALIGN - 1) & ~(size_t) (EAD_WORKSPACE_ALIGN - 1);

  if (size <= workspace->allocated)
    return TRUE;
  free (workspace->data);
  workspace->allocated = 0;
  workspace->data = aligned_alloc (EAD_WORKSPACE_ALIGN, size);
  if (workspace->data == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_BACKEND,
                   "out of memory: the network workspace needs %zu MiB", size >> 20);
      return FALSE;
    }
  workspace->allocated = size;
  return TRUE;
}

void
ead_workspace_clear (EadWorkspace *workspace)
{
  free (workspace->data);
  workspace->data = NULL;
  workspace->size = 0;
  workspace->allocated = 0;
}

typedef EadBackend *(*EadBackendModuleNew) (GError **error);

static EadBackend *
load_cuda_backend (GError **error)
{
  const char *dirs[] = { g_getenv ("EAD_MODULE_DIR"), EAD_BUILD_MODULEDIR, EAD_MODULEDIR };
  g_autoptr (GString) tried = g_string_new (NULL);

  if (!g_module_supported ())
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "CUDA backend: this platform cannot load modules");
      return NULL;
    }
  for (size_t i = 0; i < G_N_ELEMENTS (dirs); i++)
    {
      g_autofree char *path = NULL;
      GModule *module;
      EadBackendModuleNew module_new;

      if (dirs[i] == NULL)
        continue;
      path = g_module_build_path (dirs[i], "ead-backend-cuda");
      if (!g_file_test (path, G_FILE_TEST_EXISTS))
        {
          g_string_append_printf (tried, "%s%s", tried->len ? ", " : "", path);
          continue;
        }
      module = g_module_open (path, G_MODULE_BIND_LOCAL);
      if (module == NULL)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_BACKEND, "CUDA backend: %s",
                       g_module_error ());
          return NULL;
        }
      if (!g_module_symbol (module, "ead_backend_cuda_new", (gpointer *) &module_new))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_BACKEND,
                       "CUDA backend: %s has no ead_backend_cuda_new", path);
          g_module_close (module);
          return NULL;
        }
      g_module_make_resident (module);
      return module_new (error);
    }
  g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
               "CUDA backend not available: no module found (looked for %s); "
               "build with -Dcuda=enabled on a machine with the CUDA toolkit and cuDNN",
               tried->str);
  return NULL;
}

EadBackend *
ead_backend_get (const char *device, GError **error)
{
  g_autoptr (GError) cuda_error = NULL;
  EadBackend *backend;

  if (device == NULL || g_str_equal (device, "cpu"))
    return ead_backend_cpu ();
  if (g_str_equal (device, "cuda"))
    return load_cuda_backend (error);
  if (!g_str_equal (device, "auto"))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "unknown device '%s' (expected cpu, cuda or auto)", device);
      return NULL;
    }
  backend = load_cuda_backend (&cuda_error);
  if (backend != NULL)
    return backend;
  g_debug ("device auto: using the CPU (%s)", cuda_error->message);
  return ead_backend_cpu ();
}

EadBackend *
ead_backend_get_for_training (const char *device, GError **error)
{
  EadBackend *backend = ead_backend_get (device, error);

  if (backend != NULL && backend->train_compile == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED, "the %s backend cannot train",
                   backend->name);
      return NULL;
    }
  return backend;
}

GMutex *
ead_backend_compile_mutex (void)
{
  static GMutex mutex;

  return &mutex;
}

gboolean
ead_precision_parse (const char *text, EadPrecision *precision, GError **error)
{
  static const EadPrecision all[] = { EAD_PRECISION_AUTO, EAD_PRECISION_FP32,
                                       EAD_PRECISION_BF16 };

  for (size_t i = 0; text != NULL && i < G_N_ELEMENTS (all); i++)
    if (g_ascii_strcasecmp (text, ead_precision_name (all[i])) == 0)
      {
        *precision = all[i];
        return TRUE;
      }
  g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
               "unknown precision '%s' (expected auto, fp32 or bf16)", text ? text : "");
  return FALSE;
}

const char *
ead_precision_name (EadPrecision precision)
{
  switch (precision)
    {
    case EAD_PRECISION_FP32:
      return "fp32";
    case EAD_PRECISION_BF16:
      return "bf16";
    case EAD_PRECISION_AUTO:
    default:
      return "auto";
    }
}

void
ead_dropout_mask (guint64 seed, int layer, float p, float *mask, size_t count)
{
  g_autofree char *name = g_strdup_printf ("dropout.%d", layer);
  guint64 key = ead_random_key (seed, name);
  float scale = 1.0f / (1.0f - p);

  for (size_t i = 0; i < count; i++)
    mask[i] = ead_random_uniform (key, i) >= p ? scale : 0.0f;
}
