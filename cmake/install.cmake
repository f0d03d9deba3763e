# `cmake --install`: the client libraries as an installed CMake package
# (find_package(ckpt) -> ckpt::client_core, ckpt::client) and a pkg-config
# file (ckpt.pc: the client core), the public headers under include/ckpt/,
# and the ckpt and ckpt-server programs. Only the client's libraries are
# exported: nothing of the server (RocksDB, prometheus-cpp) is needed to use
# them.

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(ckpt_exported ckpt_client_core ckpt_common ckpt_rpc ckpt_proto ckpt_health_proto)
set_target_properties(ckpt_client_core PROPERTIES EXPORT_NAME client_core)
set_target_properties(ckpt_common PROPERTIES EXPORT_NAME common)
set_target_properties(ckpt_rpc PROPERTIES EXPORT_NAME rpc)
set_target_properties(ckpt_proto PROPERTIES EXPORT_NAME proto)
set_target_properties(ckpt_health_proto PROPERTIES EXPORT_NAME health_proto)
if(CKPT_HAVE_TORCH)
  list(APPEND ckpt_exported ckpt_client)
  set_target_properties(ckpt_client PROPERTIES EXPORT_NAME client)
endif()

install(TARGETS ${ckpt_exported} EXPORT ckptTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS ckpt RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
if(CKPT_BUILD_SERVER)
  install(TARGETS ckpt-server RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

# The public headers and what they include (the sources include them as
# "client/...", "common/...": include/ckpt is on the include path, and
# include/ too for <ckpt/client/raw_client.h>).
install(FILES ${PROJECT_SOURCE_DIR}/client/raw_client.h ${PROJECT_SOURCE_DIR}/client/client.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/ckpt/client)
install(FILES ${PROJECT_SOURCE_DIR}/common/types.h ${PROJECT_SOURCE_DIR}/common/retention.h
              ${PROJECT_SOURCE_DIR}/common/slice.h ${PROJECT_SOURCE_DIR}/common/tensor_diff.h
              ${PROJECT_SOURCE_DIR}/common/tensor_stats.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/ckpt/common)

set(ckpt_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/ckpt)
install(EXPORT ckptTargets NAMESPACE ckpt:: DESTINATION ${ckpt_cmake_dir})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/ckptConfig.cmake.in
  ${PROJECT_BINARY_DIR}/ckptConfig.cmake INSTALL_DESTINATION ${ckpt_cmake_dir})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/ckptConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/ckptConfig.cmake ${PROJECT_BINARY_DIR}/ckptConfigVersion.cmake
  DESTINATION ${ckpt_cmake_dir})

# ckpt.pc finds the prefix from its own place: as many ".." as
# CMAKE_INSTALL_LIBDIR/pkgconfig has components.
string(REGEX REPLACE "[^/]+" ".." ckpt_pc_up "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
configure_file(${PROJECT_SOURCE_DIR}/cmake/ckpt.pc.in ${PROJECT_BINARY_DIR}/ckpt.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/ckpt.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
