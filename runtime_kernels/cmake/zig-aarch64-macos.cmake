# Cross-compile for Apple arm64 (macOS) with `zig cc` (pip install ziglang): a stand-in for
# Xcode that catches Darwin-only breakage (Mach-O linking, .dylib, libSystem) on Linux CI.
# Compile and link only; nothing runs. The zig executable: -DZIG=..., else $ZIG, else the one in
# the `ziglang` package of $PYTHON (default python3), else `zig` on PATH.
set(CMAKE_SYSTEM_NAME Darwin)
set(CMAKE_SYSTEM_PROCESSOR arm64)
set(CMAKE_OSX_ARCHITECTURES arm64)
set(ZIG_TARGET aarch64-macos CACHE STRING "zig -target triple")

if(NOT ZIG AND DEFINED ENV{ZIG})
  set(ZIG "$ENV{ZIG}")
endif()
if(NOT ZIG)
  set(_py "$ENV{PYTHON}")
  if(NOT _py)
    set(_py python3)
  endif()
  execute_process(COMMAND "${_py}" -c "import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), 'zig'))"
                  OUTPUT_VARIABLE _zig OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _rc)
  if(_rc EQUAL 0 AND EXISTS "${_zig}")
    set(ZIG "${_zig}")
  else()
    find_program(ZIG zig)
  endif()
endif()
if(NOT ZIG)
  message(FATAL_ERROR "zig not found: pip install ziglang, or pass -DZIG=/path/to/zig")
endif()
set(ZIG "${ZIG}" CACHE FILEPATH "zig executable" FORCE)
set(ENV{ZIG} "${ZIG}")  # try_compile projects re-read this file
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES ZIG ZIG_TARGET)

set(CMAKE_C_COMPILER "${ZIG}" cc -target ${ZIG_TARGET})
set(CMAKE_CXX_COMPILER "${ZIG}" c++ -target ${ZIG_TARGET})
# Mach-O archives need a Mach-O aware ar/ranlib: zig's own
foreach(lang C CXX)
  set(CMAKE_${lang}_ARCHIVE_CREATE "\"${ZIG}\" ar qc <TARGET> <LINK_FLAGS> <OBJECTS>")
  set(CMAKE_${lang}_ARCHIVE_APPEND "\"${ZIG}\" ar q <TARGET> <LINK_FLAGS> <OBJECTS>")
  set(CMAKE_${lang}_ARCHIVE_FINISH "\"${ZIG}\" ranlib <TARGET>")
endforeach()
# zig brings the macOS libc headers and libSystem stubs; never pick up the host's libraries
set(CMAKE_FIND_ROOT_PATH "${CMAKE_CURRENT_LIST_DIR}/no-sysroot")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
