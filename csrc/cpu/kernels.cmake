# The CPU kernels' sources and per-ISA compile flags, shared by the Python extension
# (CMakeLists.txt) and the standalone kernel tests (csrc/tests/CMakeLists.txt).
#
# Never -march=native: one build must run on any CPU of its architecture. Instruction
# sets are chosen at run time (csrc/cpu/isa.cpp), and only the per-ISA translation units
# get flags: the file name says which instruction set the file may use.
#
# pyrag_cpu_kernels(<sources var> <definitions var>) sets the sources for the target
# processor (x86-64, AArch64, or portable C++ only elsewhere), with their flags as
# source properties of the calling directory, and the compile definitions any target
# built from them needs.
function(pyrag_cpu_kernels out_sources out_definitions)
  file(GLOB sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/*.cpp)
  set(definitions "")
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
    list(FILTER sources EXCLUDE REGEX "_neon[a-z0-9_]*\\.cpp$")
    set(avx512 "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mfma;-mf16c")
    foreach(src ${sources})
      if(src MATCHES "_avx512bf16\\.cpp$")
        set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "${avx512};-mavx512bf16;-mavx512vnni")
      elseif(src MATCHES "_avx512vnni\\.cpp$")
        set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "${avx512};-mavx512vnni")
      elseif(src MATCHES "_avx512\\.cpp$")
        set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "${avx512}")
      elseif(src MATCHES "_avx2vnni\\.cpp$")
        set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c;-mavxvnni")
      elseif(src MATCHES "_avx2\\.cpp$")
        set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
      endif()
    endforeach()
    set(definitions PYRAG_X86=1)
  elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "aarch64|arm64|ARM64")
    list(FILTER sources EXCLUDE REGEX "_avx[a-z0-9_]*\\.cpp$")
    # Advanced SIMD is baseline on AArch64: *_neon.cpp needs no flag.
    foreach(src ${sources})
      if(src MATCHES "_neon_dotprod\\.cpp$")
        set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "-march=armv8.2-a+dotprod")
      elseif(src MATCHES "_neon_bf16\\.cpp$")
        set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "-march=armv8.2-a+bf16")
      endif()
    endforeach()
    set(definitions PYRAG_ARM=1)
  else()
    list(FILTER sources EXCLUDE REGEX "_(avx|neon)[a-z0-9_]*\\.cpp$")
  endif()
  set(${out_sources} ${sources} PARENT_SCOPE)
  set(${out_definitions} ${definitions} PARENT_SCOPE)
endfunction()
