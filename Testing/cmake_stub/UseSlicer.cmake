# Test double of Slicer's UseSlicer.cmake (see SlicerConfig.cmake here).

# EXTENSION_NAME as the real file derives it.
if(NOT DEFINED EXTENSION_NAME OR "${EXTENSION_NAME}" STREQUAL "")
  if(DEFINED MODULE_NAME AND NOT "${MODULE_NAME}" STREQUAL "")
    set(EXTENSION_NAME ${MODULE_NAME})
  else()
    set(EXTENSION_NAME ${PROJECT_NAME})
  endif()
endif()
if("${EXTENSION_NAME}" MATCHES "^$|^Slicer$|^Project$")
  message(FATAL_ERROR "error: Make sure to call 'project(<extension_name>)' prior to"
    " 'include(\${Slicer_USE_FILE})' !")
endif()

# Regular (not bundled) extension: Slicer_BUNDLE_EXTENSIONS_LOCATION is empty.
set(Slicer_BUNDLE_EXTENSIONS_LOCATION "")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR
  "${Slicer_INSTALL_ROOT}${Slicer_BUNDLE_EXTENSIONS_LOCATION}${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")

# Extension metadata: the real file fills unset optional fields with defaults
# (Extensions/CMake/SlicerExtensionDescriptionSpec.cmake); the stub also records which
# ones the extension left unset so the test can require all of them.
set(_slicer_stub_metadata_defaults
  "DEPENDS=NA" "RECOMMENDS=NA" "BUILD_SUBDIRECTORY=." "HOMEPAGE=" "CONTRIBUTORS="
  "CATEGORY=" "ICONURL=" "DESCRIPTION=" "SCREENSHOTURLS=" "ENABLED=1" "STATUS="
  "TIER=1" "DICOM_SUPPORT_RULE=" "KEYWORDS=")
set(SLICER_STUB_DEFAULTED_METADATA "")
foreach(_entry IN LISTS _slicer_stub_metadata_defaults)
  string(REGEX MATCH "^[A-Z_]+" _name "${_entry}")
  string(REGEX REPLACE "^[A-Z_]+=" "" _default "${_entry}")
  if(NOT DEFINED EXTENSION_${_name})
    set(EXTENSION_${_name} "${_default}")
    list(APPEND SLICER_STUB_DEFAULTED_METADATA ${_name})
  endif()
endforeach()
foreach(_name LICENSE_FILE README_FILE)
  if(NOT DEFINED EXTENSION_${_name})
    string(REGEX REPLACE "_FILE$" "" _what "${_name}")
    set(EXTENSION_${_name} "${Slicer_${_what}_FILE}")
    list(APPEND SLICER_STUB_DEFAULTED_METADATA ${_name})
  endif()
endforeach()

# The real file includes CTest, which defines BUILD_TESTING (ON by default), as the
# extensions factory builds extensions.
option(BUILD_TESTING "Build the testing tree." ON)
if(BUILD_TESTING)
  enable_testing()
endif()

set(SLICER_STUB_RECORD_DIR "${CMAKE_BINARY_DIR}/slicer_stub")
file(MAKE_DIRECTORY "${SLICER_STUB_RECORD_DIR}")
file(WRITE "${SLICER_STUB_RECORD_DIR}/python_tests.txt" "")

include(${CMAKE_CURRENT_LIST_DIR}/ctkMacroCompilePythonScript.cmake)
include(${CMAKE_CURRENT_LIST_DIR}/SlicerMacroPythonTesting.cmake)
include(${CMAKE_CURRENT_LIST_DIR}/SlicerMacroBuildScriptedModule.cmake)
