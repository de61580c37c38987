# Android builds: a thin wrapper over the NDK's own toolchain file with this project's defaults
# (ANDROID_ABI arm64-v8a, ANDROID_PLATFORM android-24; pass -DANDROID_ABI=armeabi-v7a for 32-bit
# ARM, which gets the NEON variant too). The NDK comes from -DANDROID_NDK=..., $ANDROID_NDK or
# $ANDROID_NDK_HOME. CI cannot install the NDK; ci_portability.sh checks the armv7 ISA with
# gcc-arm-linux-gnueabihf instead, and ci_aarch64.sh the arm64 one.
if(NOT ANDROID_NDK)
  if(DEFINED ENV{ANDROID_NDK})
    set(ANDROID_NDK "$ENV{ANDROID_NDK}")
  elseif(DEFINED ENV{ANDROID_NDK_HOME})
    set(ANDROID_NDK "$ENV{ANDROID_NDK_HOME}")
  endif()
endif()
if(NOT EXISTS "${ANDROID_NDK}/build/cmake/android.toolchain.cmake")
  message(FATAL_ERROR "android-ndk.cmake: no NDK at '${ANDROID_NDK}': pass -DANDROID_NDK=/path/to/ndk "
                      "or set ANDROID_NDK (it must hold build/cmake/android.toolchain.cmake)")
endif()
if(NOT ANDROID_ABI)
  set(ANDROID_ABI arm64-v8a)
endif()
if(NOT ANDROID_PLATFORM)
  set(ANDROID_PLATFORM android-24)
endif()
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES ANDROID_NDK)
include("${ANDROID_NDK}/build/cmake/android.toolchain.cmake")
