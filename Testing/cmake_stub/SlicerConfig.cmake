# Test double of the Slicer SDK's SlicerConfig.cmake, for Testing/test_packaging.py only.
#
# Slicer's SDK cannot be installed on the test machines, so this package defines the
# variables an extension reads from the real one (CMake/SlicerConfig.cmake.in and
# UseSlicer.cmake.in in Slicer/Slicer) and re-implements the few macros this extension
# calls. It records what it is given under ${CMAKE_BINARY_DIR}/slicer_stub/ for the test.

set(Slicer_VERSION_MAJOR 5)
set(Slicer_VERSION_MINOR 9)
set(Slicer_REVISION "stub")
set(Slicer_OS "linux")
set(Slicer_ARCHITECTURE "amd64")

set(Slicer_USE_PYTHONQT ON)
set(Slicer_BUILD_QTSCRIPTEDMODULES ON)

# Same layout as Slicer's SlicerDirectories.cmake on Linux.
set(Slicer_LIB_DIR "lib/Slicer-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}")
set(Slicer_SHARE_DIR "share/Slicer-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}")
set(Slicer_QTSCRIPTEDMODULES_SUBDIR "qt-scripted-modules")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_LIB_DIR}/${Slicer_QTSCRIPTEDMODULES_SUBDIR}")
set(Slicer_INSTALL_ROOT "./")

set(Slicer_CMAKE_DIR "${CMAKE_CURRENT_LIST_DIR}")
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake")
# The real defaults are Slicer's License.txt and README; any existing file stands in
# (the test requires the extension to set its own, see UseSlicer.cmake here).
set(Slicer_LICENSE_FILE "${CMAKE_CURRENT_LIST_FILE}")
set(Slicer_README_FILE "${CMAKE_CURRENT_LIST_FILE}")
